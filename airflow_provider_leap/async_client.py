"""The async transport: Leap's Connect records over httpx, for the triggerer. No Airflow.

Every rule is ``client.py``'s. The backoff is an ``asyncio.sleep``: a waiting poll holds no
thread, and cancelling it stops it at once (nothing more is sent, and the connection is closed
on the loop that opened it)."""

from __future__ import annotations

import asyncio
import functools
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import anyio
import httpx

from airflow_provider_leap.client import (
    Answer,
    ConnectQuery,
    DeadlinePassed,
    Failure,
    Pager,
    RequestAttempts,
    TimeArg,
    TransportErrors,
    transport_failure,
)
from airflow_provider_leap.config import LeapConfig
from airflow_provider_leap.models import ConnectRecord

T = TypeVar("T")

HTTPX_ERRORS = TransportErrors(
    caught=(httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError, ValueError),
    timeout=(httpx.TimeoutException, TimeoutError),
    connection=(httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError, OSError),
)


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """One TLS context per process: loading the CA bundle takes 0.1 to 0.3 s of the event loop,
    which every new ``httpx.AsyncClient`` would otherwise pay again."""
    return httpx.create_ssl_context()


class AsyncLeapClient:
    """An ``httpx.AsyncClient`` to one Leap environment, with the sync client's rules; use it as
    ``async with AsyncLeapClient(config) as client: ...`` on one event loop."""

    def __init__(
        self,
        config: LeapConfig,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.config, self.rng, self._sleep = config, rng or random.Random(), sleep
        self._http = httpx.AsyncClient(
            base_url=config.base_url,
            headers={"Authorization": f"Bearer {config.api_key}", "Accept": "application/json"},
            timeout=min(config.timeout, config.request_deadline),
            follow_redirects=False,
            verify=_tls_context(),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncLeapClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(
        self, method: str, path: str, params: Sequence[tuple[str, str]] | None, body: Any
    ) -> Answer:
        attempts = RequestAttempts(self.config, method, path, self.rng, self.config.retry)
        while True:
            step = attempts.after(await self._send(method, path, params, body))
            if isinstance(step, Answer):
                return step
            await self._sleep(step)

    async def _send(
        self, method: str, path: str, params: Sequence[tuple[str, str]] | None, body: Any
    ) -> Answer | Failure:
        """One attempt, read whole within ``request_deadline``: connect, head and body under one
        cancel scope, so a server dripping any of them cannot hold the poll."""
        query = None if params is None else tuple(params)
        try:
            with anyio.fail_after(self.config.request_deadline):
                async with self._http.stream(method, path, params=query, json=body) as response:
                    chunks = [chunk async for chunk in response.aiter_bytes()]
            return Answer(response.status_code, response.headers, b"".join(chunks))
        except TimeoutError:  # the scope's (httpx raises its own timeout types)
            return transport_failure(DeadlinePassed(), self.config, HTTPX_ERRORS)
        except HTTPX_ERRORS.caught as exc:
            return transport_failure(exc, self.config, HTTPX_ERRORS)

    async def _pages(self, pager: Pager[T]) -> AsyncIterator[list[T]]:
        while pager.more():
            yield pager.page(
                await self._request(pager.method, pager.path, pager.params, pager.body)
            )

    async def connect_pages(
        self,
        ref_ids: Iterable[str] | str | None = None,
        started_after: TimeArg | None = None,
        interacted_after: TimeArg | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[list[ConnectRecord]]:
        """The pages of ``LeapClient.iter_connect_records`` (same arguments, same checks)."""
        query = ConnectQuery(self.config, ref_ids, started_after, interacted_after, page_size)
        for pager in query.pagers():
            async for records in self._pages(pager):
                yield query.check(records)

    async def get_connect_records(
        self, ref_ids: Iterable[str] | str | None = None, **filters: Any
    ) -> list[ConnectRecord]:
        """Every record of ``connect_pages`` as one list (the trigger reads pages, via PollHub)."""
        return [record async for page in self.connect_pages(ref_ids, **filters) for record in page]
