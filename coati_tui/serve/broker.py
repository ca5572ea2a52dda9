"""One generation worker shared by every HTTP request: a queue in front of it, events routed back by id.

The worker (``host.gen_client``, the same child and loader as the chat pane) answers one request at a
time, so requests take turns (an ``asyncio.Lock``); ``max_queue`` of them may wait behind the one being
answered, and ``submit`` refuses the next with ``Busy`` (the server's 429). A thread reads the worker's
events and hands each to the event loop, where it reaches its request's ``Job``. A request cancelled
while waiting never reaches the worker; one cancelled while answered is cancelled in the worker, which
ends it at the next token, and the next request starts at once.

A worker that dies fails the request it was answering (an ``error`` of kind crash with its last log
lines: the server's 503) and is started again; requests that were waiting are answered by the new one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coati_tui.core import events
from coati_tui.host.gen_client import GenerationClient, generate_request

log = logging.getLogger("coati_tui.serve")
RESTARTS = 3  # a worker that dies this many times in a row (none loaded between) is not started again


class Busy(Exception):
    """The queue is full."""


class WorkerFailed(Exception):
    def __init__(self, message: str, log_tail: list[str]):
        super().__init__(message)
        self.log_tail = log_tail


@dataclass(eq=False)  # one object per request (kept in a set)
class Job:
    rid: str
    request: dict[str, Any]
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None  # sent to the worker
    first_token: float | None = None
    finished: bool = False
    cancelled: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def deliver(self, ev: dict[str, Any]) -> None:
        if self.finished:
            return
        if ev["type"] == "token" and self.first_token is None:
            self.first_token = time.perf_counter()
        self.queue.put_nowait(ev)
        if ev["type"] in ("answer", "error"):
            self.finished = True
            self.done.set()


class Broker:
    def __init__(
        self, model: str, quant: str = "none", dtype: str = "auto", log_path: Path | None = None, max_queue: int = 16
    ) -> None:
        self.model, self.quant, self.dtype, self.log_path = model, quant, dtype, log_path
        self.max_queue = max_queue
        self.info: dict[str, Any] = {}
        self.client: GenerationClient | None = None
        self.restarts = 0
        self._ids = itertools.count(1)
        self._jobs: set[Job] = set()
        self._current: Job | None = None
        self._turn = asyncio.Lock()
        self._ready = asyncio.Event()
        self._failed: WorkerFailed | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- the worker --------------------------------------------------------------------------------
    async def start(self, timeout: float = 900.0) -> dict[str, Any]:
        """Start the worker and wait until its model is loaded; WorkerFailed says why it is not."""
        self._loop = asyncio.get_running_loop()
        self._spawn()
        await self._wait_ready(timeout)
        return self.info

    def _spawn(self) -> None:
        self._ready.clear()
        client = GenerationClient(self.model, self.quant, self.dtype, log=self.log_path)
        self.client = client
        threading.Thread(target=self._read, args=(client,), name=f"serve-events-{client.pid}", daemon=True).start()

    def _read(self, client: GenerationClient) -> None:
        assert self._loop is not None
        try:
            for ev in client.events():
                self._loop.call_soon_threadsafe(self._on_event, client, ev)
        finally:
            self._loop.call_soon_threadsafe(self._on_end, client)

    def _on_event(self, client: GenerationClient, ev: dict[str, Any]) -> None:
        if client is not self.client:
            return  # a replaced worker's last words
        kind = ev["type"]
        if kind == "loaded":
            self.info, self.restarts, self._failed = ev, 0, None
            self._ready.set()
        elif kind in ("token", "answer") or (kind == "error" and ev.get("id")):
            job = self._current
            if job is not None and job.rid == ev.get("id"):
                job.deliver(ev)
        elif kind == "error":
            self._on_death(client, ev)

    def _on_end(self, client: GenerationClient) -> None:
        if client is self.client and not self._closing:
            self._on_death(client, None)

    def _on_death(self, client: GenerationClient, ev: dict[str, Any] | None) -> None:
        if client is not self.client or self._closing:
            return
        tail = list(ev["log_tail"]) if ev else client.stderr_tail()
        message = ev["message"] if ev else f"the generation worker exited ({client.poll()})"
        self.client = None
        if self._current is not None:
            self._current.deliver(events.make("error", kind="crash", message=message, log_tail=tail))
        self.restarts += 1
        if not self.info or self.restarts > RESTARTS:
            self._failed = WorkerFailed(message, tail)  # never loaded, or keeps dying: not started again
            self._ready.set()
            if self.info:  # (one that never loaded is the caller's to report)
                log.error("the generation worker keeps dying; not starting it again: %s", message)
            return
        log.warning("the generation worker died (%s); starting it again (%d of %d)", message, self.restarts, RESTARTS)
        for line in tail[-8:]:
            log.warning("  %s", line)
        client.stop(timeout=1)
        self._spawn()

    async def _wait_ready(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except asyncio.TimeoutError as exc:
            raise WorkerFailed(f"the model did not load within {timeout:.0f} s", []) from exc
        if self._failed is not None:
            raise self._failed

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._failed is None

    @property
    def pid(self) -> int | None:
        return self.client.pid if self.client is not None else None

    # ---- requests ----------------------------------------------------------------------------------
    @property
    def answering(self) -> bool:
        return self._current is not None

    @property
    def waiting(self) -> int:
        return sum(1 for j in self._jobs if j is not self._current)

    def submit(self, prompt: list[dict[str, str]] | str, sampling: dict[str, Any]) -> Job:
        """Queue a request (Busy when ``max_queue`` already wait); its events arrive on ``job.queue``."""
        if self._current is not None and self.waiting >= self.max_queue:
            raise Busy(f"{self.waiting} requests are waiting (--max-queue {self.max_queue})")
        rid = f"s{next(self._ids)}"
        job = Job(rid, generate_request(rid, prompt, **sampling))
        self._jobs.add(job)
        asyncio.get_running_loop().create_task(self._serve(job))
        return job

    def cancel(self, job: Job) -> None:
        """Stop a request: at once if it waits, at the worker's next token if it is being answered."""
        if job.finished:
            return
        job.cancelled = True
        if job is self._current and self.client is not None:
            self.client.cancel(job.rid)

    async def _serve(self, job: Job) -> None:
        try:
            async with self._turn:
                if job.cancelled:
                    return job.deliver(_cancelled(job.rid))
                try:
                    await self._wait_ready(900.0)
                except WorkerFailed as exc:
                    return job.deliver(events.make("error", kind="crash", message=str(exc), log_tail=exc.log_tail))
                self._current, job.started = job, time.perf_counter()
                if self.client is None or not self.client.send(job.request):
                    job.deliver(events.make("error", kind="crash", message="the worker is gone", log_tail=[]))
                await job.done.wait()  # its answer, or an error (the worker's death included)
        finally:
            if self._current is job:
                self._current = None
            self._jobs.discard(job)

    async def close(self) -> None:
        self._closing = True
        if self.client is not None:
            await asyncio.to_thread(self.client.stop, 10.0)


def _cancelled(rid: str) -> dict[str, Any]:
    return events.make("answer", id=rid, text="", tokens=0, tokens_per_s=0.0, stop="cancelled")
