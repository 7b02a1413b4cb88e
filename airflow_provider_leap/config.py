"""One Leap connection, parsed once into a typed, checked ``LeapConfig``. No Airflow import.

The hook, trigger and extra link read a connection only through it: one rule for base URL,
environment and portal; a bad extra is an error naming it and its value, never the API key.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_leap.errors import LeapConfigError
from airflow_provider_leap.retry import RetryPolicy
from airflow_provider_leap.wire import ENVIRONMENT_URLS, PORTAL_URLS, WireNames

UI_PREFIX = "extra__leap__"  # how older connection forms stored the extras
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_NUMBERS = ("timeout", "request_deadline", "max_retry_wait", "retry_backoff")
_WHOLE_NUMBERS = ("max_retries", "page_size", "max_pages")
_RETRY_EXTRAS = {  # extra -> RetryPolicy field
    "max_retries": "max_retries",
    "max_retry_wait": "max_wait",
    "retry_backoff": "backoff_base",
}
_WIRE_EXTRAS = tuple(f.name for f in fields(WireNames))


@dataclass(frozen=True)
class LeapConfig:
    """Everything the client needs to talk to one Leap environment, checked on creation.

    Empty ``base_url``: Leap's host for ``environment``. Empty ``environment``: the one of
    ``base_url`` (staging when the host name contains ``staging``, else production). Empty
    ``portal_url``: Leap's Partner Portal for the environment.
    """

    base_url: str = ""
    api_key: str = field(default="", repr=False)
    environment: str = ""
    portal_url: str = ""
    timeout: float = 30.0
    request_deadline: float = 120.0
    max_pages: int = 10_000
    page_size: int = 500
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    wire: WireNames = field(default_factory=WireNames)
    allow_insecure_http: bool = False
    connect_account: str | None = None
    connect_variant: str | None = None
    connect_base_url: str | None = None
    webhook_header: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        env, url = _environment_and_url(self.environment, self.base_url, self.allow_insecure_http)
        object.__setattr__(self, "api_key", _checked_key(self.api_key))
        object.__setattr__(self, "environment", env)
        object.__setattr__(self, "base_url", url)
        object.__setattr__(self, "portal_url", self.portal_url.strip() or PORTAL_URLS[env])
        for name in ("timeout", "request_deadline"):
            if not 0 < getattr(self, name) < math.inf:
                raise LeapConfigError(f"{name} must be seconds > 0, got {getattr(self, name)!r}")
        for name in ("page_size", "max_pages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LeapConfigError(f"{name} must be a whole number >= 1, got {value!r}")

    @classmethod
    def from_connection(cls, conn: Any, **overrides: Any) -> LeapConfig:
        """Parse an Airflow ``Connection`` (host, schema, port, password, extra), strictly.

        ``overrides`` replace extras by name, checked the same way; ``retry`` and ``wire`` may
        also be given whole, as a ``RetryPolicy`` and a ``WireNames``."""
        try:
            whole = {k: overrides.pop(k) for k in ("retry", "wire") if k in overrides}
            kinds: dict[str, type] = {"retry": RetryPolicy, "wire": WireNames}
            for name, value in whole.items():
                if not isinstance(value, kinds[name]):
                    raise LeapConfigError(f"{name} must be a {kinds[name].__name__}")
            values = _extras(conn.extra) | _checked(overrides)
            retry = {_RETRY_EXTRAS[k]: values.pop(k) for k in list(values) if k in _RETRY_EXTRAS}
            names = {k: values.pop(k) for k in list(values) if k in _WIRE_EXTRAS}
            config = cls(
                base_url=_host_url(conn.host, conn.schema, conn.port),
                api_key=conn.password or "",
                retry=RetryPolicy(**retry),
                wire=WireNames(**names),
                **values,
            )
        except LeapConfigError as exc:
            raise LeapConfigError(f"Leap connection {conn.conn_id!r}: {exc}") from None
        return replace(config, **whole)


_OWN_EXTRAS = {f.name for f in fields(LeapConfig)} - {"base_url", "api_key", "retry", "wire"}
KNOWN_EXTRAS = tuple(sorted(_OWN_EXTRAS | {*_RETRY_EXTRAS, *_WIRE_EXTRAS}))


def _extras(raw: Any) -> dict[str, Any]:
    """The extra JSON's settings, each checked (an empty form field: absent)."""
    try:
        data = json.loads(raw) if isinstance(raw, str) and raw else (raw or {})
    except ValueError as exc:
        raise LeapConfigError(
            f'the extra is not valid JSON ({exc}); it must be an object like {{"timeout": 60}}'
        ) from None
    if not isinstance(data, dict):
        raise LeapConfigError(
            f"the extra must be a JSON object of settings, not a {type(data).__name__}"
        )
    return _checked({str(k).removeprefix(UI_PREFIX): v for k, v in data.items()})


def _checked(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings by extra name, each of its type and range; an unknown name raises with a hint."""
    for name in settings:
        if name not in KNOWN_EXTRAS:
            close = difflib.get_close_matches(name, KNOWN_EXTRAS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise LeapConfigError(f"unknown extra {name!r}: {hint}known: {', '.join(KNOWN_EXTRAS)}")
    return {name: _value(name, v) for name, v in settings.items() if v not in (None, "")}


def _value(name: str, value: Any) -> Any:
    """One extra's value, of its type and range; a bool is never a number to a person."""
    if name == "allow_insecure_http":
        word = str(value).strip().lower()  # a JSON true is "true" too
        if word not in _TRUE + _FALSE:
            raise LeapConfigError(f"extra {name}={value!r} is not true or false")
        return word in _TRUE
    if name not in _NUMBERS + _WHOLE_NUMBERS:
        if not isinstance(value, str):
            raise LeapConfigError(f"extra {name} must be a string, got a {type(value).__name__}")
        return value.strip()
    number = math.nan
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            number = float(value)
    if not math.isfinite(number):
        raise LeapConfigError(f"extra {name}={value!r} is not a finite number")
    if name in _WHOLE_NUMBERS and not number.is_integer():
        raise LeapConfigError(f"extra {name}={value!r} is not a whole number")
    if name in _RETRY_EXTRAS and number < 0:
        raise LeapConfigError(f"extra {name} must be >= 0, got {value!r}")
    return int(number) if name in _WHOLE_NUMBERS else number


def _host_url(host: str | None, schema: str | None, port: int | None) -> str:
    """The host field as a URL: the URI form's schema sets the scheme, its port is appended."""
    host = (host or "").strip()
    if host and "://" not in host and schema in ("http", "https"):
        host = f"{schema}://{host}"
    if host and port and urlsplit(host if "://" in host else f"//{host}").port is None:
        host = f"{host}:{port}"
    return host


def _checked_key(key: str) -> str:
    """The key without surrounding whitespace; damage that would break the header is refused."""
    key = (key or "").strip()
    if not key:
        raise LeapConfigError("No Leap API key: set it as the password of the Airflow connection")
    found = unsafe_in_header(key)
    if found is None:
        return key
    position, what = found
    where = f"{what} at position {position} of {len(key)}: copy it again from Leap's Partner Portal"
    if key[:7].lower() == "bearer ":
        where = "a 'Bearer ' prefix: give the key alone (the provider adds 'Bearer ')"
    raise LeapConfigError(
        f"the API key (the connection's password) holds {where} (the key is never shown here)"
    )


def unsafe_in_header(value: str, *, spaces: bool = False) -> tuple[int, str] | None:
    """The position (from 1) and kind of the first character of a secret that an HTTP header
    cannot carry as typed (servers read header bytes as latin-1), or None. Spaces count unless
    ``spaces``. Meant for error messages that must never show the secret itself."""
    for position, char in enumerate(value, 1):
        if char.isascii() and char.isprintable() and (spaces or char != " "):
            continue
        if char.isascii():
            return position, "a space, line break or other control character"
        return position, f"a non-ASCII character (U+{ord(char):04X}, pasted with it?)"
    return None


def _environment_and_url(environment: str, base_url: str, allow_http: bool) -> tuple[str, str]:
    """The one rule for the environment and the base URL (see ``LeapConfig``)."""
    env = environment.strip().lower()
    if env and env not in ENVIRONMENT_URLS:
        raise LeapConfigError(
            f"environment {environment!r} is not one of {sorted(ENVIRONMENT_URLS)}; "
            "or set the host to a base URL"
        )
    url = ENVIRONMENT_URLS[env or "production"]
    if base_url.strip():
        url = _checked_url(base_url, allow_http)
    leap_env = next((name for name, leap_url in ENVIRONMENT_URLS.items() if leap_url == url), env)
    if env not in ("", leap_env):
        raise LeapConfigError(
            f"environment {env!r} contradicts the host {url} ({leap_env}): a key works in "
            "one environment only; drop the host or the environment"
        )
    return env or ("staging" if "staging" in (urlsplit(url).hostname or "") else "production"), url


def _checked_url(url: str, allow_http: bool) -> str:
    """``scheme://host[:port]`` only; plain HTTP only to loopback unless allowed."""
    text = url.strip()
    parts = urlsplit(text if "://" in text else "https://" + text)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = parts._replace(scheme="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LeapConfigError(f"base URL {url!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise LeapConfigError("the base URL must not carry credentials; put the key in password")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise LeapConfigError(
            f"base URL {url!r} has a path or query: give scheme://host[:port] only (the Connect "
            "path is the extra connections_path)"
        )
    if parts.scheme == "http" and not allow_http and not is_loopback(parts.hostname):
        raise LeapConfigError(
            f"Refusing plain http:// to {parts.hostname}: the API key would cross the network "
            "unencrypted. Use https, or set the extra allow_insecure_http=true."
        )
    return f"{parts.scheme}://{parts.netloc}"


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is this machine (plain HTTP to it keeps the key on the machine)."""
    try:
        return host == "localhost" or (host is not None and ipaddress.ip_address(host).is_loopback)
    except ValueError:
        return False
