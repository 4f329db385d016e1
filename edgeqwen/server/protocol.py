"""uvicorn's HTTP protocol with a deadline for each request's head: a connection that dribbles it is closed.

uvicorn bounds idle keep-alive connections (timeout_keep_alive) and the requests it serves at once
(limit_concurrency), but not how long a client may take to send a request's head, so a few clients
sending one byte at a time ("slowloris") could hold connections forever. This subclass of the
protocol uvicorn picks (httptools when installed, else h11) closes a connection whose request line
and headers have not all arrived `head_timeout` seconds after it opened or after its last answer.
The body has its own deadline, in body.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol


def with_head_deadline(head_timeout: float) -> type:
    """uvicorn's HTTP protocol class, closing connections whose request head takes over `head_timeout` seconds."""

    class HeadDeadlineProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _head_timer: asyncio.TimerHandle | None = None
        _waiting_cycle: Any = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._head_timer is not None and self.cycle is not self._waiting_cycle:
                self._disarm()  # a whole request head arrived

        def on_response_complete(self) -> None:
            super().on_response_complete()
            idle = self.cycle is None or self.cycle.response_complete  # not already serving a pipelined request
            if idle and not self.transport.is_closing():
                self._arm()  # the next request on this connection gets the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._waiting_cycle = self.cycle
            self._head_timer = self.loop.call_later(head_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _too_slow(self) -> None:
            self._head_timer = None
            if self.cycle is self._waiting_cycle and not self.transport.is_closing():
                self.transport.close()

    return HeadDeadlineProtocol
