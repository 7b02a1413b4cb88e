"""LeapConfig: one parse of a connection, strict about every extra, one environment rule."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from airflow_provider_leap import wire
from airflow_provider_leap.config import KNOWN_EXTRAS, LeapConfig
from airflow_provider_leap.errors import LeapConfigError


@dataclass
class Conn:
    """The fields of an Airflow connection that LeapConfig reads."""

    host: str | None = None
    password: str | None = "k:k"
    extra: str | None = None
    schema: str | None = None
    port: int | None = None
    conn_id: str | None = "leap_x"


def parse(extra: Any = None, **fields: Any) -> LeapConfig:
    if extra is not None and not isinstance(extra, str):
        extra = json.dumps(extra)
    return LeapConfig.from_connection(Conn(extra=extra, **fields))  # type: ignore[arg-type]


def test_defaults() -> None:
    config = parse()
    assert (config.base_url, config.environment) == (wire.PRODUCTION_URL, "production")
    assert config.portal_url == "https://partner.leap.energy"
    assert (config.timeout, config.request_deadline, config.page_size) == (30.0, 120.0, 500)
    assert (config.max_pages, config.retry.max_retries, config.retry.max_wait) == (10_000, 5, 300)
    assert config.wire == wire.WireNames()


def test_every_extra_is_read() -> None:
    extra = {
        "environment": "staging",
        "portal_url": "https://portal.example",
        "timeout": "7.5",
        "request_deadline": 60,
        "max_pages": 20,
        "page_size": 200.0,
        "max_retries": 2,
        "max_retry_wait": 9,
        "retry_backoff": 0.25,
        "allow_insecure_http": "yes",
        "ref_id_param": "refId",
        "records_key": "data",
        "connect_account": "acme",
        "connect_variant": "RESIDENTIAL",
        "connect_base_url": "https://connect.leap.energy",
        "webhook_header": "X-Leap-Secret",
        "webhook_secret": "s3cret",
    }
    config = parse(extra)
    assert config.base_url == wire.STAGING_URL and config.portal_url == "https://portal.example"
    assert (config.timeout, config.request_deadline, config.max_pages) == (7.5, 60.0, 20)
    assert config.page_size == 200 and config.allow_insecure_http is True
    assert (config.retry.max_retries, config.retry.max_wait, config.retry.backoff_base) == (
        2,
        9,
        0.25,
    )
    assert (config.wire.ref_id_param, config.wire.records_key) == ("refId", "data")
    assert (config.connect_account, config.connect_variant) == ("acme", "RESIDENTIAL")
    assert config.connect_base_url == "https://connect.leap.energy"
    assert (config.webhook_header, config.webhook_secret) == ("X-Leap-Secret", "s3cret")
    assert "s3cret" not in repr(config) and "k:k" not in repr(config)
    assert set(extra) <= set(KNOWN_EXTRAS)


def test_empty_form_fields_mean_the_defaults_and_prefixed_names_are_read() -> None:
    config = parse({"timeout": None, "page_size": "", "extra__leap__environment": "staging"})
    assert (config.timeout, config.page_size, config.environment) == (30.0, 500, "staging")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"enviroment": "staging"}, "unknown extra 'enviroment': did you mean 'environment'?"),
        ({"max_retry": 3}, "unknown extra 'max_retry': did you mean 'max_retries'?"),
        ({"colour": "blue"}, "unknown extra 'colour': known: allow_insecure_http, "),
        ({"timeout": "nan"}, "extra timeout='nan' is not a finite number"),
        ({"timeout": "inf"}, "extra timeout='inf' is not a finite number"),
        ({"max_retry_wait": "inf"}, "extra max_retry_wait='inf' is not a finite number"),
        ({"timeout": True}, "extra timeout=True is not a finite number"),
        ({"page_size": True}, "extra page_size=True is not a finite number"),
        ({"page_size": 1.9}, "extra page_size=1.9 is not a whole number"),
        ({"max_retries": "2.9"}, "extra max_retries='2.9' is not a whole number"),
        ({"timeout": "soon"}, "extra timeout='soon' is not a finite number"),
        ({"timeout": 0}, "timeout must be seconds > 0, got 0"),
        ({"page_size": 0}, "page_size must be a whole number >= 1, got 0"),
        ({"max_retries": -1}, "extra max_retries must be >= 0, got -1"),
        (
            {"allow_insecure_http": "maybe"},
            "extra allow_insecure_http='maybe' is not true or false",
        ),
        ({"connect_account": 5}, "extra connect_account must be a string, got a int"),
        (
            {"connections_path": "v1.1/connections"},
            "connections_path 'v1.1/connections' must be a path starting with '/'",
        ),
        ({"environment": "prod"}, "environment 'prod' is not one of ['production', 'staging']"),
    ],
)
def test_bad_extras_are_named(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(LeapConfigError) as err:
        parse(extra)
    assert str(err.value).startswith("Leap connection 'leap_x': ")
    assert message in str(err.value)


def test_a_number_given_as_text_is_a_number() -> None:
    assert parse({"timeout": "1.5", "max_retries": "3"}).timeout == 1.5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('{"environment": "staging",}', "the extra is not valid JSON"),
        ('["environment", "staging"]', "the extra must be a JSON object of settings, not a list"),
    ],
)
def test_an_unreadable_extra_is_an_error_not_the_defaults(extra: str, message: str) -> None:
    with pytest.raises(LeapConfigError, match=message):
        parse(extra)


@pytest.mark.parametrize(
    ("fields", "base_url", "environment"),
    [
        ({}, wire.PRODUCTION_URL, "production"),
        ({"extra": {"environment": " Staging "}}, wire.STAGING_URL, "staging"),
        ({"host": "https://api.staging.leap.energy"}, wire.STAGING_URL, "staging"),
        ({"host": "api.leap.energy/"}, wire.PRODUCTION_URL, "production"),
        ({"host": "http://127.0.0.1:8765"}, "http://127.0.0.1:8765", "production"),
        (
            {"host": "127.0.0.1", "port": 8765, "schema": "http"},
            "http://127.0.0.1:8765",
            "production",
        ),
        (
            {"host": "https://leap-staging.proxy.example"},
            "https://leap-staging.proxy.example",
            "staging",
        ),
        (
            {"host": "http://[::1]:2", "extra": {"environment": "staging"}},
            "http://[::1]:2",
            "staging",
        ),
    ],
)
def test_one_rule_for_base_url_environment_and_portal(fields, base_url, environment) -> None:
    extra = fields.pop("extra", None)
    config = parse(extra, **fields)
    assert (config.base_url, config.environment) == (base_url, environment)
    assert config.portal_url == wire.PORTAL_URLS[environment]


def test_a_host_and_an_environment_that_disagree_are_refused() -> None:
    with pytest.raises(LeapConfigError, match="environment 'staging' contradicts the host"):
        parse({"environment": "staging"}, host="https://api.leap.energy")


@pytest.mark.parametrize(
    ("host", "message"),
    [
        (
            "https://api.leap.energy/v1.1/",
            "has a path or query: give scheme://host\\[:port\\] only",
        ),
        ("https://api.leap.energy?x=1", "has a path or query"),
        ("ftp://api.leap.energy", "is not an http\\(s\\) URL"),
        ("https://user:pw@api.leap.energy", "must not carry credentials"),
        ("https://api.leap.energy:port", "is not an http\\(s\\) URL"),
        ("http://leap.internal:8080", "Refusing plain http:// to leap.internal"),
        ("http://localhost.evil.com", "Refusing plain http://"),
    ],
)
def test_unusable_hosts_are_refused(host: str, message: str) -> None:
    with pytest.raises(LeapConfigError, match=message):
        parse(host=host)


def test_plain_http_to_a_remote_host_needs_an_explicit_opt_in() -> None:
    config = parse({"allow_insecure_http": True}, host="http://leap.internal:8080")
    assert config.base_url == "http://leap.internal:8080"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "No Leap API key"),
        ("   ", "No Leap API key"),
        (
            "abcd:SECRETKEY123\nX-Evil: 1",
            "a space, line break or other control character at position 18",
        ),
        ("abcd:SECRET KEY123", "a space, line break or other control character"),
        ("abcd:SECRET\tKEY123", "a space, line break or other control character"),
        ("abcd:SECRETKEY123\u200b", "a non-ASCII character (U+200B, pasted with it?)"),
        ("\u201cabcd:SECRETKEY123\u201d", "a non-ASCII character (U+201C"),
        ("Bearer abcd:SECRETKEY123", "a 'Bearer ' prefix: give the key alone"),
    ],
)
def test_a_damaged_key_is_refused_without_showing_it(key: str, message: str) -> None:
    with pytest.raises(LeapConfigError) as err:
        parse(password=key)
    assert message in str(err.value)
    if key.strip():  # where the damage is, unless it is the prefix
        assert ("position" in str(err.value)) is ("Bearer" not in key)
    assert "SECRET" not in str(err.value) and "SECRET" not in repr(err.value)


def test_surrounding_whitespace_is_not_part_of_the_key() -> None:
    assert parse(password="  abcd:key\n").api_key == "abcd:key"


def test_direct_construction_is_checked_the_same_way() -> None:
    assert LeapConfig(api_key="k:k", environment="staging").base_url == wire.STAGING_URL
    with pytest.raises(LeapConfigError, match="request_deadline must be seconds > 0"):
        LeapConfig(api_key="k:k", request_deadline=float("inf"))
    with pytest.raises(LeapConfigError, match="max_pages must be"):
        LeapConfig(api_key="k:k", max_pages=0)
