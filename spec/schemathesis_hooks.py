"""Schemathesis hooks for the conformance run (loaded through ``spec/schemathesis.toml``).

A page token is a value only the server can issue: both specs type it as "any string", so a
valid-looking request with an invented token is rejected (400) by the emulator and, as far as
anyone can tell, by Leap too. Examples and positive cases therefore go without one; tokens are
still sent in negative cases (a wrong type must be a 400). The emulator's own tests follow real
tokens page after page.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis import GenerationMode

_PAGE_TOKENS = ("page-token", "page_token")


def _drop_page_token(case: Any) -> None:
    for part in (case.query, case.body):
        if isinstance(part, dict):
            for name in _PAGE_TOKENS:
                part.pop(name, None)


@schemathesis.hook
def before_add_examples(context: Any, examples: list[Any]) -> None:
    for case in examples:
        _drop_page_token(case)


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    meta = case.meta
    if meta is not None and meta.generation.mode is GenerationMode.POSITIVE:
        _drop_page_token(case)
    return case
