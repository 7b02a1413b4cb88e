"""Reference IDs: Leap's rule for them, and reading a list of them from a rendered template.

Leap: 3 to 256 characters, none of ``/ \\ ? ] [ { } ! # $ % ^ & * ( ) < > |``. No Airflow import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable

from airflow_provider_leap.errors import LeapConfigError, LeapRefIdError

MIN_LENGTH = 3
MAX_LENGTH = 256
FORBIDDEN = "/\\?][{}!#$%^&*()<>|"
_FORBIDDEN = frozenset(FORBIDDEN)
RULE = f"3 to 256 characters, none of {' '.join(FORBIDDEN)}"


def is_valid_ref_id(value: object) -> bool:
    """Whether Leap accepts ``value`` as a Reference ID."""
    return (
        isinstance(value, str)
        and MIN_LENGTH <= len(value) <= MAX_LENGTH
        and _FORBIDDEN.isdisjoint(value)
    )


def validate_ref_ids(ref_ids: Iterable[str] | str) -> list[str]:
    """Unique Reference IDs in first-seen order; an ID Leap would reject raises at once."""
    if isinstance(ref_ids, str):
        ref_ids = [ref_ids]
    unique = dict.fromkeys(ref_ids)
    for ref_id in unique:
        if not is_valid_ref_id(ref_id):
            raise LeapRefIdError(f"Reference ID {ref_id!r} is not valid for Leap: {RULE}")
    return list(unique)


def rendered_list(value: str | Iterable[str], name: str) -> list[str]:
    """The strings a (possibly templated, already rendered) argument holds.

    A list renders as its text (``"['a', 'b']"``) and is read back as the list; any other string
    is comma-separated values (pass a real list for values that contain commas). ``"None"`` is
    refused: it is what a template renders for a missing value, never a value someone meant.
    """
    if not isinstance(value, str):
        if not isinstance(value, Iterable):
            raise LeapConfigError(
                f"{name} is {value!r}: give a list of strings, or one comma-separated string"
            )
        items = list(value)
        for item in items:
            if not isinstance(item, str):
                raise LeapConfigError(f"{name} holds {item!r}, which is not a string")
        return items
    text = value.strip()
    if text in ("None", "null"):
        raise LeapConfigError(f"{name} rendered to {text!r}: a template that found no value?")
    if text.startswith("["):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise LeapConfigError(
                f"{name} {text[:80]!r} looks like a list but is not one"
            ) from None
        return rendered_list(parsed, name)
    return [part.strip() for part in text.split(",") if part.strip()]


def ref_ids_argument(value: str | Iterable[str], name: str = "ref_ids") -> list[str]:
    """An operator's or sensor's ``ref_ids`` after rendering: unique valid IDs, never empty.

    An empty list would otherwise mean "nobody" in one place and "everyone" in another, so it
    is an error; ``None`` ("every customer") is the caller's to handle before this.
    """
    ids = validate_ref_ids(rendered_list(value, name))
    if not ids:
        raise LeapConfigError(f"{name} is empty ({value!r}): give at least one Reference ID")
    return ids
