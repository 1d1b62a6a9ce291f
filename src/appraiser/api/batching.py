"""Pricing concurrent single-stone requests together, with a bounded queue."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class Overloaded(RuntimeError):
    """Too much is waiting already: the client should retry shortly (503 with Retry-After)."""


# a stone, how it is to be priced (explain, comparables, then any further options such as the
# day), and the future its answer goes to
Pending = tuple[dict[str, Any], tuple[Any, ...], "asyncio.Future[dict[str, Any]]"]


class MicroBatcher:
    """Prices single-stone requests that arrive together in one model call.

    A request joins a queue; one model call at a time runs in a worker thread and takes the
    whole queue. Alone, a request is priced at once (no waiting for company); under load the
    requests that arrived during a call share the next one, which spreads the boosters' fixed
    cost per call (a few hundred microseconds) over all of them. The answers are the same as
    pricing each stone alone. The queue is bounded (`max_queued`): past it, Overloaded.

    A plain price (no explanation, no comparables) asked when `alone()` says no other request is
    in flight and nothing is queued is priced right here, in the event loop: the two thread
    hops cost a lone request more than its price does, and with nothing else in flight no one
    waits for the loop meanwhile.
    """

    def __init__(
        self,
        price: Callable[..., list[dict[str, Any]]],  # (stones, explain, comparables, *more)
        max_queued: int = 2000,
        alone: Callable[[], bool] = lambda: False,
    ) -> None:
        self._price = price
        self._alone = alone
        self.max_queued = max_queued
        self._queue: list[Pending] = []
        self.inline = 0  # requests priced in the event loop (alone), for tests and debugging
        self._running = False
        self._task: asyncio.Task[None] | None = None
        self._thread: ThreadPoolExecutor | None = None  # made when first needed (and again
        # after close: an app's lifespan may run more than once)

    async def price(
        self, stone: dict[str, Any], explain: bool, comparables: int, *more: Any
    ) -> dict:
        """The stone's answer; `more`, further options passed on to the price function (stones
        asked with different options are priced in separate calls)."""
        if len(self._queue) >= self.max_queued:  # a bounded wait: past it, say so at once
            raise Overloaded(f"{len(self._queue):,} stones are waiting to be priced")
        if not (self._running or self._queue or explain or comparables) and self._alone():
            self.inline += 1
            return self._price([stone], explain, comparables, *more)[0]
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queue.append((stone, (explain, comparables, *more), future))
        if not self._running:
            self._running = True
            self._task = asyncio.get_running_loop().create_task(self._drain())  # keep a reference
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                if self._thread is None:
                    self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pricer")
                try:
                    answers = await loop.run_in_executor(self._thread, self._price_all, batch)
                except Exception as exc:  # e.g. no champion: every waiting request gets it
                    for *_, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (*_, future), answer in zip(batch, answers, strict=True):
                    if not future.done():  # the client may have gone
                        future.set_result(answer)
        finally:
            self._running = False

    def _price_all(self, batch: list[Pending]) -> list[dict[str, Any]]:
        """Price the batch, one model call per kind of request (explained or not...)."""
        answers: list[dict[str, Any] | None] = [None] * len(batch)
        kinds: dict[tuple[Any, ...], list[int]] = {}
        for i, (_, options, _) in enumerate(batch):
            kinds.setdefault(options, []).append(i)
        for options, positions in kinds.items():
            priced = self._price([batch[i][0] for i in positions], *options)
            for i, answer in zip(positions, priced, strict=True):
                answers[i] = answer
        return [a for a in answers if a is not None]

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=False)
            self._thread = None
