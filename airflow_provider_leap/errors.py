"""Exceptions of the Airflow-free core: the hook re-raises them as ``LeapException`` (an
``AirflowException``) carrying the same message, ``status`` and ``title``."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass


class LeapError(Exception):
    """Base class of every error this provider raises on purpose."""


class LeapConfigError(LeapError):
    """The connection or arguments are not usable (bad URL, plain HTTP to a remote host...)."""


class LeapRefIdError(LeapConfigError):
    """A Reference ID Leap would reject: an argument's, or one customer's record's (so a send
    raising it is that customer's failure, not the settings': ``delivery``)."""


@dataclass(eq=False)  # eq=False: an exception stays hashable, compared by identity
class LeapAPIError(LeapError):
    """Leap answered with an error, or could not be reached within the retry bound.

    The message names the method, the path (never the query, which may hold Reference IDs, and
    never the API key), the HTTP status and Leap's ``title`` when the body carries one.
    ``transient`` is true when trying again later may succeed (Leap overloaded, unreachable or
    cut off, the request's retries spent), false when Leap refused the request as such."""

    message: str
    _: KW_ONLY
    method: str = ""
    path: str = ""
    status: int | None = None
    title: str | None = None
    transient: bool = False

    def __post_init__(self) -> None:
        super().__init__(self.message)


class LeapAuthError(LeapAPIError):
    """401 (header missing or malformed) or 403 (invalid key, wrong environment, permission)."""


class LeapPagingError(LeapAPIError):
    """The API repeated a page token or sent a page that cannot be read."""


def is_transient(exc: BaseException) -> bool:
    """Whether a later attempt may succeed where this one failed (see ``LeapAPIError``)."""
    return isinstance(exc, LeapAPIError) and exc.transient
