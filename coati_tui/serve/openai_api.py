"""The OpenAI API's shapes, as the official client reads them: request bodies checked field by field, and
the response objects (chat.completion, its stream chunks, text_completion, errors). Pure Python, no I/O.

A body is checked before anything reaches the worker; ``ApiError`` carries the HTTP status and the field
at fault (``param``), and ``error_body`` renders it the way OpenAI does:
``{"error": {"message": ..., "type": "invalid_request_error", "param": "temperature", "code": null}}``.
Fields the server does not use (``user``, ``frequency_penalty``, ...) are accepted and ignored; a field
it uses with the wrong type or out of range is a 400. Two of vLLM's extensions are understood: ``min_tokens``
and ``ignore_eos``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")
FINISH = {"end_token": "stop", "stop_sequence": "stop", "max_new_tokens": "length", "cancelled": "stop"}
MAX_STOPS = 4
DEFAULT_MAX_TOKENS = 256


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.type = status, message, param, type_


def error_body(exc: ApiError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": None}}


@dataclass
class Completion:
    """One checked request: ``prompt`` (a messages list for chat, a string for plain completions)."""

    kind: str  # "chat" | "text"
    prompt: list[dict[str, str]] | str
    stream: bool = False
    include_usage: bool = False
    sampling: dict[str, Any] = field(default_factory=dict)  # the worker's names: max_new_tokens, stop, ...
    model: str = ""


def _number(body: dict[str, Any], name: str, lo: float, hi: float, default: float | None) -> float | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"{name} must be a number, not {type(value).__name__}", name)
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be between {lo:g} and {hi:g}, not {value}", name)
    return float(value)


def _integer(body: dict[str, Any], name: str, lo: int, default: int | None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer, not {type(value).__name__}", name)
    if value < lo:
        raise ApiError(400, f"{name} must be at least {lo}, not {value}", name)
    return value


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"stop takes at most {MAX_STOPS} sequences, not {len(stops)}", "stop")
    return [s for s in stops if s]


def _content(value: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts (images and audio are not served)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"{where}[{i}] must be a text part ({{'type': 'text', 'text': ...}})", where)
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError(400, f"{where} must be a string or a list of text parts", where)


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "messages is required", "messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object with role and content", where)
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role not in ROLES:
            raise ApiError(400, f"{where}.role must be one of {', '.join(ROLES)}, not {m.get('role')!r}", where)
        out.append({"role": str(role), "content": _content(m.get("content"), f"{where}.content")})
    return out


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # the client's list form, one prompt
    if prompt is None:
        raise ApiError(400, "prompt is required", "prompt")
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string (one prompt a request)", "prompt")
    return prompt


def parse(body: Any, kind: str) -> Completion:
    """A checked request from a decoded JSON body; ``kind`` is "chat" or "text"."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    n = _integer(body, "n", 1, 1)
    if n != 1:
        raise ApiError(400, f"n must be 1 (one answer a request), not {n}", "n")
    if not isinstance(body.get("stream", False), bool):
        raise ApiError(400, "stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    limit = body.get("max_completion_tokens") if body.get("max_tokens") is None else body.get("max_tokens")
    name = "max_tokens" if body.get("max_tokens") is not None else "max_completion_tokens"
    max_new = _integer({name: limit}, name, 1, DEFAULT_MAX_TOKENS)
    sampling: dict[str, Any] = {
        "max_new_tokens": max_new,
        "temperature": _number(body, "temperature", 0.0, 2.0, 1.0),
        "top_p": _number(body, "top_p", 0.0, 1.0, 1.0) or 1e-6,
        "seed": _integer(body, "seed", -(2**63), None),
        "stop": _stops(body),
        # vLLM's extensions, which clients already send: min_tokens, and ignore_eos (as many as max_tokens)
        "min_new_tokens": max_new if body.get("ignore_eos") is True else _integer(body, "min_tokens", 0, 0),
    }
    model = body.get("model", "")
    if not isinstance(model, str):
        raise ApiError(400, "model must be a string", "model")
    prompt: list[dict[str, str]] | str = _messages(body) if kind == "chat" else _prompt(body)
    return Completion(
        kind=kind,
        prompt=prompt,
        stream=bool(body.get("stream", False)),
        include_usage=bool(options.get("include_usage", False)),
        sampling=sampling,
        model=model,
    )


# ---- responses -----------------------------------------------------------------------------------------
def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(answer: dict[str, Any]) -> dict[str, int]:
    prompt, completion = int(answer.get("prompt_tokens", 0)), int(answer["tokens"])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(answer: dict[str, Any]) -> str:
    return FINISH.get(str(answer["stop"]), "stop")


def response(req: Completion, rid: str, model: str, answer: dict[str, Any]) -> dict[str, Any]:
    """The whole answer, not streamed."""
    head = {"id": rid, "created": int(time.time()), "model": model}
    if req.kind == "chat":
        message = {"role": "assistant", "content": answer["text"]}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(answer)}
        return {**head, "object": "chat.completion", "choices": [choice], "usage": usage(answer)}
    choice = {"index": 0, "text": answer["text"], "logprobs": None, "finish_reason": finish_reason(answer)}
    return {**head, "object": "text_completion", "choices": [choice], "usage": usage(answer)}


def chunk(req: Completion, rid: str, model: str, text: str | None, finish: str | None = None) -> dict[str, Any]:
    """One streamed piece; ``text=None`` with a ``finish`` reason closes the choice. A chat stream's first
    chunk carries the role."""
    head = {"id": rid, "created": int(time.time()), "model": model}
    if req.kind == "chat":
        delta: dict[str, str] = {} if text is None else {"content": text}
        if text == "" and finish is None:
            delta = {"role": "assistant", "content": ""}
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**head, "object": "chat.completion.chunk", "choices": [choice]}
    choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    return {**head, "object": "text_completion", "choices": [choice]}


def usage_chunk(req: Completion, rid: str, model: str, answer: dict[str, Any]) -> dict[str, Any]:
    """The last chunk when ``stream_options.include_usage``: no choices, the counts."""
    kind = "chat.completion.chunk" if req.kind == "chat" else "text_completion"
    return {
        "id": rid,
        "created": int(time.time()),
        "model": model,
        "object": kind,
        "choices": [],
        "usage": usage(answer),
    }
