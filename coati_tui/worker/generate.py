"""The generation worker: a child process that loads one model and answers requests, streaming tokens.

    python -m coati_tui.worker MODEL [--quant none|8bit|4bit|gptq] [--dtype auto|fp32|bf16|fp16]

Protocol: JSON lines, the same event schema as the trainer (``coati_tui.events``). Requests on stdin:
``{"op": "generate", "id": "r1", "messages": [...], "max_new_tokens": 256, "temperature": 0.7,
"top_p": 0.9, "top_k": 0, "repetition_penalty": 1.0, "seed": null, "stop": ["###"], "min_new_tokens": 0}``
(or ``"prompt":
"raw text"`` in place of ``messages``: no chat template), ``{"op": "cancel", "id": "r1"}``, ``{"op": "quit"}``.
Events on stdout: ``loaded`` once (device, dtype, quantization, memory, context length), ``token`` pieces
while an answer streams, ``answer`` at its end (stop: end_token / max_new_tokens / stop_sequence /
cancelled; tokens and prompt_tokens), ``error`` (kind: config for a bad model path or request,
missing_dependency, gpu_oom, crash). A request's error carries its ``id`` (and ``param``, the field at
fault) and leaves the worker running. A prompt that fills the context is refused; one that leaves less
room than ``max_new_tokens`` stops at the context's end (``max_new_tokens``).

Models: a model folder, a cached hub id, or a run's output (a merged model, or a PEFT adapter over its
base); a GPTQ checkpoint loads through its own quantization config. 4-bit is bitsandbytes NF4 with
double quantization, 8-bit is bitsandbytes LLM.int8. Device: CUDA when present, else CPU.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time

from coati_tui.core import events
from coati_tui.core.errors import CoatiError, error_kind, transformers_major
from coati_tui.core.events import DTYPES, QUANTS


class WorkerError(CoatiError):
    """What the worker cannot do; ``param`` names the request's field at fault, where one is."""

    def __init__(self, kind: str, message: str, param: str | None = None):
        super().__init__(message)
        self.kind, self.param = kind, param


def load(model: str, quant: str = "none", dtype: str = "auto", trust_remote_code: bool = False):
    """(model, tokenizer, info) ready to generate; WorkerError names what is wrong (a missing or cut-short
    file, custom code without ``trust_remote_code``) before transformers reads a byte of it."""
    import importlib.util

    from transformers import AutoModelForCausalLM

    from coati_tui.core import modelinfo
    from coati_tui.data.tokenize import TemplateError, end_token, load_tokenizer
    from coati_tui.trainer import models

    try:
        folder = modelinfo.check_model(model, trust_remote_code)
    except modelinfo.ModelError as exc:
        raise WorkerError("config", str(exc)) from exc
    device = models.pick_device()
    if dtype == "auto":
        dtype = models.auto_precision(device)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    gptq = (config.get("quantization_config") or {}).get("quant_method") == "gptq"
    bits = {"4bit": 4, "8bit": 8}.get(quant, 0) if not gptq else 0
    if quant == "gptq" and not gptq:
        raise WorkerError(
            "config",
            f"{folder} is not a GPTQ checkpoint (its config.json has no GPTQ "
            "quantization_config): make one with `coati-tui quantize`",
        )
    if gptq:
        if importlib.util.find_spec("gptqmodel") is None:
            raise WorkerError("missing_dependency", f"{folder} is a GPTQ checkpoint: pip install 'coati-tui[gptq]'")
        quant = "gptq"
    elif quant in ("4bit", "8bit"):
        if importlib.util.find_spec("bitsandbytes") is None:
            raise WorkerError("missing_dependency", f"--quant {quant} needs bitsandbytes: pip install bitsandbytes")
        if device == "cpu" and transformers_major() < 5:
            raise WorkerError(
                "missing_dependency",
                f"bitsandbytes {quant} on CPU needs transformers >= 5 "
                "(this stack pins an older one); use a CUDA GPU or --quant none",
            )
    kwargs = models.load_kwargs(dtype, bits, device)
    kwargs["trust_remote_code"] = trust_remote_code
    if gptq:
        kwargs["device_map"] = {"": device}
    base = models.adapter_base(folder)
    t0 = time.perf_counter()
    if base:
        from peft import PeftModel

        model_obj = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        model_obj = PeftModel.from_pretrained(model_obj, folder)
        if quant == "none":
            model_obj = model_obj.merge_and_unload()  # plain weights: no adapter overhead per token
    else:
        model_obj = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if "device_map" not in kwargs:
        model_obj.to(device)
    model_obj.eval()
    try:
        tokenizer, _ = load_tokenizer(str(folder))
        end_id, _ = end_token(tokenizer)
    except TemplateError as exc:
        raise WorkerError("config", str(exc)) from exc
    memory = sum(t.numel() * t.element_size() for t in list(model_obj.parameters()) + list(model_obj.buffers()))
    info = {
        "model": str(folder),
        "device": device,
        "dtype": dtype,
        "quant": quant,
        "memory_bytes": memory,
        "load_s": time.perf_counter() - t0,
        "end_token_id": end_id,
        "context_length": int(getattr(model_obj.config, "max_position_embeddings", 0) or 0),  # 0: not known
    }
    return model_obj, tokenizer, info


class Worker:
    """Answers one request at a time; a cancel (read by the stdin thread) stops the current one."""

    def __init__(self, model, tokenizer, info: dict, emit):
        self.model, self.tokenizer, self.info, self.emit = model, tokenizer, info, emit
        self.cancelled: set[str] = set()

    def generate(self, req: dict) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        from coati_tui.worker.stops import StopScanner

        rid = str(req.get("id", ""))
        enc, gen, eos = self._prepare(req, rid)
        worker = self

        class Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return rid in worker.cancelled

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        out: dict = {}

        def run():
            try:
                with torch.no_grad():
                    out["ids"] = self.model.generate(
                        **enc,
                        generation_config=gen,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([Cancel()]),
                    )
            except BaseException as exc:  # surfaced below, after the streamer ends
                out["error"] = exc
                streamer.end()

        t0 = time.perf_counter()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        scan = StopScanner(req.get("stop") or ())
        for piece in streamer:
            ready = scan.feed(piece)
            if scan.hit is not None:
                self.cancelled.add(rid)  # a stop sequence: generation ends at the next token
            if ready:
                self.emit("token", id=rid, text=ready)
        thread.join()
        if "error" in out:
            raise out["error"]
        if scan.hit is None and (rest := scan.finish()):
            self.emit("token", id=rid, text=rest)
        new = out["ids"][0, enc["input_ids"].shape[1] :].tolist()
        dt = time.perf_counter() - t0
        if scan.hit is not None:
            stop = "stop_sequence"
        elif rid in self.cancelled:
            stop = "cancelled"
        else:
            stop = "end_token" if new and new[-1] in eos else "max_new_tokens"
        self.cancelled.discard(rid)
        self.emit(
            "answer",
            id=rid,
            text=scan.text,
            tokens=len(new),
            prompt_tokens=int(enc["input_ids"].shape[1]),
            tokens_per_s=len(new) / max(dt, 1e-9),
            stop=stop,
        )

    def _prepare(self, req: dict, rid: str):
        """(encoded prompt, generation config, end token ids) for a request; WorkerError names a bad field."""
        import torch
        from transformers import GenerationConfig

        from coati_tui.data.tokenize import render

        prompt, messages = req.get("prompt"), req.get("messages")
        if isinstance(prompt, str):
            text, field = prompt, "prompt"
        elif isinstance(messages, list) and messages:
            text, field = render(self.tokenizer, messages, add_generation_prompt=True), "messages"
        else:
            raise WorkerError("config", f"request {rid!r}: messages must be a non-empty list", param="messages")
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.info["device"])
        n = int(enc["input_ids"].shape[1])
        context = self.info.get("context_length") or 0
        if context and n >= context:
            raise WorkerError(
                "config", f"request {rid!r}: the {field} is {n} tokens, the model's context is {context}", param=field
            )
        if n == 0:
            raise WorkerError("config", f"request {rid!r}: the {field} is empty", param=field)
        if req.get("seed") is not None:
            torch.manual_seed(int(req["seed"]))
        temperature = float(req.get("temperature", 0.7))
        eos = {self.info["end_token_id"]} | (
            {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        )
        max_new = int(req.get("max_new_tokens", 256))
        max_new = min(max_new, context - n) if context else max_new  # the context's end is a length stop
        # top_k 0 = off when sampling (None would mean the model's generation config, or transformers' 50);
        # greedy leaves it unset: a top_k with do_sample off is a warning per answer
        top_k = int(req.get("top_k", 0)) if temperature > 0 else None
        gen = GenerationConfig(
            max_new_tokens=max_new,
            min_new_tokens=min(int(req.get("min_new_tokens") or 0), max_new) or None,  # the end token held off
            do_sample=temperature > 0,
            temperature=max(temperature, 1e-5),
            top_p=float(req.get("top_p", 1.0)),
            top_k=top_k,
            repetition_penalty=float(req.get("repetition_penalty", 1.0)),
            eos_token_id=sorted(eos),
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return enc, gen, eos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m coati_tui.worker", description=__doc__)
    ap.add_argument("model")
    ap.add_argument("--quant", choices=QUANTS, default="none")
    ap.add_argument("--dtype", choices=DTYPES, default="auto")
    ap.add_argument("--trust-remote-code", action="store_true", help="run a model folder's own Python code")
    args = ap.parse_args(argv)
    emit = events.Emitter(None, echo=sys.stdout)
    try:
        model, tokenizer, info = load(args.model, args.quant, args.dtype, args.trust_remote_code)
    except Exception as exc:
        emit("error", kind=error_kind(exc), message=f"{exc}", log_tail=[])
        return 1
    emit("loaded", **{k: v for k, v in info.items() if k != "end_token_id"})
    worker = Worker(model, tokenizer, info, emit)
    requests: queue.Queue = queue.Queue()

    def read_stdin():
        for line in sys.stdin:
            try:
                req = json.loads(line)
            except json.JSONDecodeError:
                emit("error", kind="config", message=f"not a JSON request: {line.strip()[:80]!r}", log_tail=[])
                continue
            if req.get("op") == "cancel":
                worker.cancelled.add(str(req.get("id", "")))
            else:
                requests.put(req)
        requests.put({"op": "quit"})

    threading.Thread(target=read_stdin, daemon=True).start()
    while True:
        req = requests.get()
        if req.get("op") == "quit":
            return 0
        if req.get("op") != "generate":
            emit("error", kind="config", message=f"unknown op {req.get('op')!r}", log_tail=[])
            continue
        try:
            worker.generate(req)
        except Exception as exc:  # one bad request: say so (its id and field), keep serving
            message = str(exc) if isinstance(exc, WorkerError) else f"{type(exc).__name__}: {exc}"
            extra = {"param": exc.param} if isinstance(exc, WorkerError) and exc.param else {}
            emit("error", kind=error_kind(exc), message=message, log_tail=[], id=str(req.get("id", "")), **extra)
