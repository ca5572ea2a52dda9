"""The HTTP side of ``coati-tui serve``: a FastAPI app with the OpenAI routes, over one ``Broker``.

    GET  /v1/models             the one model served
    POST /v1/chat/completions   messages rendered by the model's chat template; streamed or not
    POST /v1/completions        a plain prompt, sent as it is
    GET  /health                loading | ok | failed, the worker's pid, whether it is answering, how
                                many requests wait

Streams are server-sent events (``data: {...}`` lines, then ``data: [DONE]``). A client that goes away
mid-stream cancels its generation. With an API key, every /v1 request must carry it as a bearer token
(a route's own check, not a middleware: Starlette's BaseHTTPMiddleware wraps streams).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from coati_tui.serve import openai_api as api
from coati_tui.serve.broker import Broker, Busy, Job

log = logging.getLogger("coati_tui.serve")


def worker_error(ev: dict[str, Any]) -> api.ApiError:
    """A worker's ``error`` event as the HTTP error a client gets."""
    if ev["kind"] == "config":
        return api.ApiError(400, ev["message"], ev.get("param"))
    tail = [line for line in ev.get("log_tail") or [] if line.strip()][-5:]
    last = f"; its last log lines: {' | '.join(tail)}" if tail else ""
    if ev["kind"] == "crash":
        message = f"the generation worker died: {ev['message']}{last}; it is being started again, retry shortly"
    else:
        message = f"{ev['kind']}: {ev['message']}{last}"
    return api.ApiError(503, message, type_="server_error")


def _json_error(exc: api.ApiError) -> JSONResponse:
    return JSONResponse(api.error_body(exc), status_code=exc.status)


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(broker: Broker, name: str, api_key: str | None = None) -> FastAPI:
    """The app over a started ``broker`` (``await broker.start()`` first); its shutdown stops the worker."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await broker.close()

    app = FastAPI(title="coati-tui", lifespan=lifespan, docs_url=None, redoc_url=None)

    def denied(request: Request) -> Response | None:
        """401 unless the request carries the key (when there is one)."""
        given = request.headers.get("authorization", "")
        if not api_key or hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            return None
        body = api.error_body(api.ApiError(401, "a wrong or missing API key (Authorization: Bearer KEY)"))
        body["error"]["code"] = "invalid_api_key"
        return JSONResponse(body, status_code=401)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        status = "ok" if broker.ready else "loading" if broker.client is not None else "failed"
        return {
            "status": status,
            "model": name,
            "worker_pid": broker.pid,
            "answering": broker.answering,
            "waiting": broker.waiting,
        }

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        card = {"id": name, "object": "model", "created": int(time.time()), "owned_by": "coati-tui"}
        return denied(request) or JSONResponse({"object": "list", "data": [card]})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return denied(request) or await _complete(broker, name, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return denied(request) or await _complete(broker, name, request, "text")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        return _json_error(api.ApiError(500, f"{type(exc).__name__}: {exc}", type_="server_error"))

    return app


async def _complete(broker: Broker, name: str, request: Request, kind: str) -> Response:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _json_error(api.ApiError(400, f"the request body is not JSON: {exc}"))
    try:
        req = api.parse(body, kind)
        job = broker.submit(req.prompt, req.sampling)
    except api.ApiError as exc:
        return _json_error(exc)
    except Busy as exc:
        return _json_error(api.ApiError(429, f"the server is busy: {exc}; retry later", type_="rate_limit_error"))
    rid = api.new_id(kind)
    watch = asyncio.create_task(_watch(request, broker, job))
    if req.stream:
        return StreamingResponse(_stream(broker, job, req, rid, name, watch), media_type="text/event-stream")
    try:
        while True:
            ev = await job.queue.get()
            if ev["type"] == "answer":
                _log_request(job, kind, ev)
                return JSONResponse(api.response(req, rid, name, ev))
            if ev["type"] == "error":
                return _json_error(worker_error(ev))
    finally:
        watch.cancel()


async def _watch(request: Request, broker: Broker, job: Job) -> None:
    """Cancel ``job`` when its client disconnects. Read here, not left to Starlette: a server that writes
    to a closed stream without an error (uvicorn 0.29, which colossalai pins) would never tell it."""
    while not job.finished:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            _cancel(broker, job)
            return


def _cancel(broker: Broker, job: Job) -> None:
    if not job.finished and not job.cancelled:
        broker.cancel(job)
        log.info("%s: the client went away; its generation is cancelled", job.rid)


async def _stream(
    broker: Broker, job: Job, req: api.Completion, rid: str, name: str, watch: asyncio.Task[None]
) -> AsyncIterator[str]:
    ended = False
    try:
        if req.kind == "chat":
            yield _sse(api.chunk(req, rid, name, ""))  # the role
        while True:
            ev: dict[str, Any] | None = await job.queue.get()
            if ev is not None and ev["type"] == "token":
                text, ev = _pending_text(job, ev["text"])
                yield _sse(api.chunk(req, rid, name, text))
            if ev is None:
                continue
            if ev["type"] == "answer":
                yield _sse(api.chunk(req, rid, name, None, api.finish_reason(ev)))
                if req.include_usage:
                    yield _sse(api.usage_chunk(req, rid, name, ev))
                _log_request(job, req.kind, ev)
                break
            elif ev["type"] == "error":
                yield _sse(api.error_body(worker_error(ev)))
                break
        ended = True
        yield "data: [DONE]\n\n"
    finally:
        watch.cancel()
        if not ended:  # the client went away (or the server is stopping): stop generating for it
            _cancel(broker, job)


def _pending_text(job: Job, text: str) -> tuple[str, dict[str, Any] | None]:
    """``text`` and every token already queued behind it, as one piece (a slow reader gets fewer, longer
    chunks instead of falling behind), and the event that ended the run of tokens, if one came."""
    while not job.queue.empty():
        ev = job.queue.get_nowait()
        if ev["type"] != "token":
            return text, ev
        text += ev["text"]
    return text, None


def _log_request(job: Job, kind: str, answer: dict[str, Any]) -> None:
    now = time.perf_counter()
    started = job.started or job.submitted
    rate = answer["tokens"] / max(now - started, 1e-9)
    first = f", first token {1000 * (job.first_token - started):.0f} ms" if job.first_token else ""
    waited = f", waited {started - job.submitted:.2f} s" if started - job.submitted > 0.05 else ""
    log.info(
        "%s %s: %s+%s tokens, %.1f tokens/s%s, %.2f s%s (%s)",
        kind,
        job.rid,
        answer.get("prompt_tokens", "?"),
        answer["tokens"],
        rate,
        first,
        now - started,
        waited,
        "cancelled" if answer["stop"] == "cancelled" else api.finish_reason(answer),
    )
