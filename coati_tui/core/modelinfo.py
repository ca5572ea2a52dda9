"""What a model is, read from its ``config.json`` alone: no weights, no torch, no transformers.

``resolve_model`` finds the folder behind what a user typed (a model folder, a run folder, or a hub
id already in the local Hugging Face cache). ``Arch.from_config`` turns the config into the shapes
the planner needs, and ``Arch.param_count`` gives the exact parameter count of the causal LM (or of
the one-label reward model), equal to what ``AutoModelFor*.from_config`` builds on the meta device.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict


class ModelError(ValueError):
    kind = "config"

    """A model reference that cannot be used; the message says what was tried."""


def _hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    hf_home = (
        os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    )
    return Path(hf_home) / "hub"


def _cached_snapshot(hub_id: str) -> Path | None:
    repo = _hub_cache() / ("models--" + hub_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        snap = snapshots / ref.read_text().strip()
        if snap.is_dir():
            return snap
    candidates = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    return candidates[0] if candidates else None


def resolve_model(spec: str | os.PathLike[str]) -> Path:
    """The folder holding ``config.json`` (or ``adapter_config.json``) for ``spec``.

    ``spec`` may be a model folder, a coati-tui run folder (its ``final/``), or a hub id that is
    already in the local cache. Nothing is downloaded.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "final").is_dir() and not (path / "config.json").exists():
            return resolve_model(path / "final")
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
            return path
        raise ModelError(f"{path}: no config.json or adapter_config.json here (is it a model folder?)")
    if path.exists():
        raise ModelError(f"{path}: is a file; give the model's folder")
    snap = _cached_snapshot(str(spec))
    if snap is not None:
        return snap
    raise ModelError(
        f"{spec}: no such folder, and not a hub id in the local cache ({_hub_cache()}). "
        f"coati-tui downloads nothing: fetch it first, e.g. `huggingface-cli download {spec}`."
    )


def read_config(spec: str | os.PathLike[str]) -> dict[str, Any]:
    """The model's config as a dict. For a PEFT adapter folder, the config of its base model."""
    folder = resolve_model(spec)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        adapter = json.loads((folder / "adapter_config.json").read_text())
        base = adapter.get("base_model_name_or_path")
        if not base:
            raise ModelError(f"{folder / 'adapter_config.json'}: no base_model_name_or_path")
        return read_config(base)
    try:
        cfg: dict[str, Any] = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{cfg_file}: not valid JSON ({exc})") from exc
    if "text_config" in cfg and "hidden_size" not in cfg:  # multimodal wrappers: plan the language model
        cfg = {**cfg["text_config"], "tie_word_embeddings": cfg.get("tie_word_embeddings", True)}
    return cfg


class _Family(TypedDict):
    qkv_bias: bool | None
    o_bias: bool | None
    head_dim: int | None
    tied: bool
    norms: int
    qk_norm: bool
    fused: bool


# Per-family defaults that matter for shapes when config.json leaves them out (transformers' defaults).
_FAMILIES: dict[str, _Family] = {
    #          qkv bias, o bias, head_dim default, tied default, norms/layer, qk norm, fused
    "llama": dict(qkv_bias=None, o_bias=None, head_dim=None, tied=False, norms=2, qk_norm=False, fused=False),
    "mistral": dict(qkv_bias=False, o_bias=False, head_dim=None, tied=False, norms=2, qk_norm=False, fused=False),
    "qwen2": dict(qkv_bias=True, o_bias=False, head_dim=None, tied=False, norms=2, qk_norm=False, fused=False),
    "qwen3": dict(qkv_bias=None, o_bias=None, head_dim=128, tied=False, norms=2, qk_norm=True, fused=False),
    "gemma": dict(qkv_bias=None, o_bias=None, head_dim=256, tied=True, norms=2, qk_norm=False, fused=False),
    "gemma2": dict(qkv_bias=None, o_bias=None, head_dim=256, tied=True, norms=4, qk_norm=False, fused=False),
    "phi3": dict(qkv_bias=False, o_bias=False, head_dim=None, tied=False, norms=2, qk_norm=False, fused=True),
}
# None above means "read attention_bias from the config" (default False).


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int
    bias: bool

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


STORED_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2, "float8_e4m3fn": 1}


@dataclass(frozen=True)
class Arch:
    model_type: str
    exact: bool  # False: an unknown family, counted as a Llama
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    norms_per_layer: int
    qk_norm: bool
    linears: tuple[Linear, ...]  # one decoder layer's linear modules
    stored_bytes: int = 2  # bytes per weight in the checkpoint (config.json's dtype; 16-bit when unsaid)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Arch:
        model_type = cfg.get("model_type", "llama")
        fam = _FAMILIES.get(model_type)
        exact = fam is not None
        fam = fam or _FAMILIES["llama"]
        try:
            hidden = int(cfg["hidden_size"])
            layers = int(cfg["num_hidden_layers"])
            heads = int(cfg["num_attention_heads"])
            intermediate = int(cfg["intermediate_size"])
            vocab = int(cfg["vocab_size"])
        except KeyError as exc:
            raise ModelError(f"config.json has no {exc.args[0]!r}; cannot plan a {model_type!r} model") from exc
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or fam["head_dim"] or hidden // heads)
        bias_attr = bool(cfg.get("attention_bias", False))
        qkv_bias = bias_attr if fam["qkv_bias"] is None else fam["qkv_bias"]
        o_bias = bias_attr if fam["o_bias"] is None else fam["o_bias"]
        mlp_bias = bool(cfg.get("mlp_bias", False))
        q_out, kv_out = heads * head_dim, kv_heads * head_dim
        linears: tuple[Linear, ...]
        if fam["fused"]:
            linears = (
                Linear("qkv_proj", hidden, q_out + 2 * kv_out, qkv_bias),
                Linear("o_proj", q_out, hidden, o_bias),
                Linear("gate_up_proj", hidden, 2 * intermediate, mlp_bias),
                Linear("down_proj", intermediate, hidden, mlp_bias),
            )
        else:
            linears = (
                Linear("q_proj", hidden, q_out, qkv_bias),
                Linear("k_proj", hidden, kv_out, qkv_bias),
                Linear("v_proj", hidden, kv_out, qkv_bias),
                Linear("o_proj", q_out, hidden, o_bias),
                Linear("gate_proj", hidden, intermediate, mlp_bias),
                Linear("up_proj", hidden, intermediate, mlp_bias),
                Linear("down_proj", intermediate, hidden, mlp_bias),
            )
        return cls(
            model_type=model_type,
            exact=exact,
            hidden=hidden,
            layers=layers,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate=intermediate,
            vocab=vocab,
            tied=bool(cfg.get("tie_word_embeddings", fam["tied"])),
            norms_per_layer=fam["norms"],
            qk_norm=fam["qk_norm"],
            linears=linears,
            stored_bytes=STORED_BYTES.get(str(cfg.get("dtype") or cfg.get("torch_dtype") or ""), 2),
        )

    # ---- parameter counts -------------------------------------------------------------------
    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def layer_linear_params(self) -> int:
        return sum(lin.params for lin in self.linears)

    @property
    def layer_other_params(self) -> int:
        """Norm weights of one layer (RMSNorm: a weight vector, no bias)."""
        return self.norms_per_layer * self.hidden + (2 * self.head_dim if self.qk_norm else 0)

    @property
    def body_params(self) -> int:
        """Embedding + decoder layers + final norm: every model built on this backbone has these."""
        return self.embed_params + self.layers * (self.layer_linear_params + self.layer_other_params) + self.hidden

    def param_count(self, head: str = "lm", num_labels: int = 1) -> int:
        """Exact count. ``head``: "lm" (causal LM), "score" (sequence classification), "none"."""
        if head == "lm":
            return self.body_params + (0 if self.tied else self.vocab * self.hidden)
        if head == "score":
            return self.body_params + self.hidden * num_labels
        if head == "none":
            return self.body_params
        raise ValueError(f"unknown head {head!r}")

    @property
    def linear_params_total(self) -> int:
        """Parameters inside decoder-layer Linear modules: what bitsandbytes quantizes."""
        return self.layers * self.layer_linear_params

    def lora_params(self, rank: int, targets: str | list[str] = "all-linear") -> int:
        """Trainable LoRA parameters for ``rank`` on the named modules (or every decoder linear)."""
        if rank <= 0:
            return 0
        return self.layers * sum(rank * (lin.in_features + lin.out_features) for lin in self.lora_targets(targets))

    def lora_targets(self, targets: str | list[str]) -> tuple[Linear, ...]:
        if targets == "all-linear":
            return self.linears
        return tuple(lin for lin in self.linears if lin.name in set(targets))


# ---- before anything loads: the folder's files, read as bytes (no torch) -------------------------------
REMOTE_CODE_FLAG = "--trust-remote-code"


def check_model(spec: str | os.PathLike[str], trust_remote_code: bool = False) -> Path:
    """The folder behind ``spec``, once its files look whole: a readable ``config.json`` (or an adapter's
    config and its base), no custom code unless trusted, every ``*.safetensors`` as long as its header
    says and every shard an index names present. Raises ModelError naming the file."""
    folder = resolve_model(spec)
    cfg_file = folder / "config.json"
    if cfg_file.is_file():
        cfg = _json_file(cfg_file)
        if cfg.get("auto_map") and not trust_remote_code:
            raise ModelError(
                f"{cfg_file}: asks to run the model's own Python code (auto_map: "
                f"{', '.join(sorted(cfg['auto_map']))}); coati-tui runs it only with {REMOTE_CODE_FLAG}. "
                "Read that code first, or remove auto_map to load transformers' built-in "
                f"{cfg.get('model_type', '?')!r} code"
            )
    else:
        base = _json_file(folder / "adapter_config.json").get("base_model_name_or_path")
        if not base:
            raise ModelError(f"{folder / 'adapter_config.json'}: no base_model_name_or_path")
        check_model(base, trust_remote_code)
    for name in JSON_FILES:  # a cut-short tokenizer.json fails deep in tokenizers without a file name
        if (folder / name).is_file():
            _json_file(folder / name)
    check_weights(folder)
    return folder


JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json")


def _json_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: not a JSON object")
    return data


def check_weights(folder: Path) -> None:
    """Every shard a ``*.safetensors.index.json`` names exists, and every ``*.safetensors`` file is whole."""
    for index in sorted(folder.glob("*.safetensors.index.json")):
        shards = set((_json_file(index).get("weight_map") or {}).values())
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise ModelError(f"{index}: names {len(missing)} shard(s) not in the folder: {', '.join(missing[:4])}")
    for file in sorted(folder.glob("*.safetensors")):
        check_safetensors(file)
    for file in sorted(folder.glob("pytorch_model*.bin")) + sorted(folder.glob("adapter_model.bin")):
        check_torch_file(file)


def check_torch_file(file: Path) -> None:
    """A ``torch.save`` file is a zip whose directory sits at its end (a cut-short one has none), or an old
    (torch < 1.6) pickle, which starts with the pickle protocol byte."""
    import zipfile

    with file.open("rb") as f:
        first = f.read(1)
    if not zipfile.is_zipfile(file) and first != b"\x80":
        raise ModelError(f"{file}: truncated or damaged ({file.stat().st_size} bytes, no zip directory at its end)")


def check_safetensors(file: Path) -> None:
    """A safetensors file is an 8-byte little-endian header length, a JSON header giving each tensor's
    data offsets, then the data: the file must end exactly where the last tensor does."""
    size = file.stat().st_size
    again = "copy or download it again"
    with file.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelError(f"{file}: truncated ({size} bytes, not even a header); {again}")
        n = int.from_bytes(head, "little")
        if 8 + n > size:
            raise ModelError(f"{file}: truncated: its header alone is {n} bytes, the file has {size}; {again}")
        try:
            header = json.loads(f.read(n))
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise ModelError(f"{file}: damaged header, not a safetensors file ({exc}); {again}") from exc
    expected = 8 + n + end
    if expected > size:
        raise ModelError(
            f"{file}: truncated: {size} of {expected} bytes ({expected - size} missing, a cut-short copy "
            f"or download); {again}"
        )
    if expected < size:
        raise ModelError(f"{file}: {size - expected} bytes past the last tensor (damaged); {again}")
