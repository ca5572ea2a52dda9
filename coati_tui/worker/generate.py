"""The generation worker: a child process that loads one model and answers requests, streaming tokens.

    python -m coati_tui.worker MODEL [--quant none|8bit|4bit|gptq] [--dtype auto|fp32|bf16|fp16]

Protocol: JSON lines, the same event schema as the trainer (``coati_tui.events``). Requests on stdin:
``{"op": "generate", "id": "r1", "messages": [...], "max_new_tokens": 256, "temperature": 0.7,
"top_p": 0.9, "top_k": 0, "repetition_penalty": 1.0, "seed": null}``, ``{"op": "cancel", "id": "r1"}``,
``{"op": "quit"}``. Events on stdout: ``loaded`` once (device, dtype, quantization, memory), ``token``
pieces while an answer streams, ``answer`` at its end (stop: end_token / max_new_tokens / cancelled),
``error`` (kind: config for a bad model path or request, missing_dependency, gpu_oom, crash) after which a
request-level error leaves the worker running.

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
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def load(model: str, quant: str = "none", dtype: str = "auto"):
    """(model, tokenizer, info) ready to generate; WorkerError names what is wrong."""
    import importlib.util

    from transformers import AutoModelForCausalLM

    from coati_tui.core import modelinfo
    from coati_tui.data.tokenize import TemplateError, end_token, load_tokenizer
    from coati_tui.trainer import models

    try:
        folder = modelinfo.resolve_model(model)
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
    }
    return model_obj, tokenizer, info


class Worker:
    """Answers one request at a time; a cancel (read by the stdin thread) stops the current one."""

    def __init__(self, model, tokenizer, info: dict, emit):
        self.model, self.tokenizer, self.info, self.emit = model, tokenizer, info, emit
        self.cancelled: set[str] = set()

    def generate(self, req: dict) -> None:
        import torch
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        from coati_tui.data.tokenize import render

        rid = str(req.get("id", ""))
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            raise WorkerError("config", f"request {rid!r}: messages must be a non-empty list")
        text = render(self.tokenizer, messages, add_generation_prompt=True)
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.info["device"])
        if req.get("seed") is not None:
            torch.manual_seed(int(req["seed"]))
        temperature = float(req.get("temperature", 0.7))
        eos = {self.info["end_token_id"]} | (
            {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        )
        gen = GenerationConfig(
            max_new_tokens=int(req.get("max_new_tokens", 256)),
            do_sample=temperature > 0,
            temperature=max(temperature, 1e-5),
            top_p=float(req.get("top_p", 1.0)),
            top_k=int(req.get("top_k", 0)) or None,
            repetition_penalty=float(req.get("repetition_penalty", 1.0)),
            eos_token_id=sorted(eos),
            pad_token_id=self.tokenizer.pad_token_id,
        )
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
        pieces = []
        for piece in streamer:
            if piece:
                pieces.append(piece)
                self.emit("token", id=rid, text=piece)
        thread.join()
        if "error" in out:
            raise out["error"]
        new = out["ids"][0, enc["input_ids"].shape[1] :].tolist()
        dt = time.perf_counter() - t0
        stop = "cancelled" if rid in self.cancelled else "end_token" if new and new[-1] in eos else "max_new_tokens"
        self.cancelled.discard(rid)
        self.emit(
            "answer", id=rid, text="".join(pieces), tokens=len(new), tokens_per_s=len(new) / max(dt, 1e-9), stop=stop
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m coati_tui.worker", description=__doc__)
    ap.add_argument("model")
    ap.add_argument("--quant", choices=QUANTS, default="none")
    ap.add_argument("--dtype", choices=DTYPES, default="auto")
    args = ap.parse_args(argv)
    emit = events.Emitter(None, echo=sys.stdout)
    try:
        model, tokenizer, info = load(args.model, args.quant, args.dtype)
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
        except Exception as exc:  # one bad request: say so, keep serving
            emit("error", kind=error_kind(exc), message=f"{type(exc).__name__}: {exc}", log_tail=[])
