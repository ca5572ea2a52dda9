"""Reading SFT and preference data into one normal form, with errors that name file, line and field.

No torch here: the app validates and previews files with this module.

Normal forms:
- SFT: a list of messages ``[{"role": "system"|"user"|"assistant", "content": str}, ...]`` with at
  least one assistant message.
- Preference: ``Pair(prompt=[messages], chosen=[messages], rejected=[messages])``.

Accepted SFT records: ColossalChat ``{"messages": [{"from", "content"}]}``, chat
``{"messages": [{"role", "content"}]}``, ShareGPT ``{"conversations": [{"from", "value"}]}``,
Alpaca / InstructionWild ``{"instruction", "input", "output"}``, ``{"prompt", "response"|"completion"}``.
Accepted preference records: ColossalChat ``{"context": [...], "chosen": [...], "rejected": [...]}``,
TRL ``{"prompt", "chosen", "rejected"}`` (strings or message lists), and TRL's implicit-prompt form
(``chosen`` and ``rejected`` are whole conversations sharing their opening).
Files: .json (a list), .jsonl, .csv (message lists as JSON text in a cell), .parquet, folders saved
with ``datasets.Dataset.save_to_disk``, and the ranking pane's preference store (.sqlite: its A/B
judgments as ColossalChat records; ties, skips and conflicting judgments left out).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
}

Message: TypeAlias = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": str}
Record: TypeAlias = dict[str, Any]  # one raw record of a data file (JSON object, CSV row, dataset row)
_T = TypeVar("_T")


class DataError(ValueError):
    kind = "data"

    """One bad record: names the file, where in it (line/row/record) and the field."""

    def __init__(self, file: str | Path, where: str | None, field: str | None, message: str):
        self.file, self.where, self.field = str(file), where, field
        loc = ", ".join(x for x in (where, f"field {field!r}" if field else None) if x)
        super().__init__(f"{file}" + (f": {loc}" if loc else "") + f": {message}")


@dataclass
class Pair:
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]


# ---- files -> (where, record) -------------------------------------------------------------------


def iter_records(path: str | Path) -> Iterator[tuple[str, Record]]:
    """Yield ``("line 3", record)`` for every record of a data file or saved dataset folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(path, None, None, "no such file or folder")
    if path.is_dir():
        yield from _iter_dataset_dir(path)
        return
    suffix = path.suffix.lower()
    if suffix in (".sqlite", ".sqlite3", ".db"):  # the ranking pane's preference store: its A/B judgments
        from coati_tui.data.prefstore import Store, StoreError

        try:
            with Store(path, create=False) as store:
                records, _ = store.preferences()
        except StoreError as exc:
            raise DataError(path, None, None, str(exc).removeprefix(f"{path}: ")) from exc
        for n, rec in enumerate(records, 1):
            yield f"pair {n}", rec
        return
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(path, f"line {n}", None, f"not valid JSON ({exc.msg})") from exc
                yield f"line {n}", _must_be_object(rec, path, f"line {n}")
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(path, f"line {exc.lineno}", None, f"not valid JSON ({exc.msg})") from exc
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"train": [...]}
        if not isinstance(data, list):
            raise DataError(path, None, None, "a .json data file must hold a list of records (or use .jsonl)")
        for n, rec in enumerate(data, 1):
            yield f"record {n}", _must_be_object(rec, path, f"record {n}")
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            for n, row in enumerate(csv.DictReader(f), 2):  # row 1 is the header
                yield f"row {n}", {k: _maybe_json(v) for k, v in row.items() if k is not None}
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for n, rec in enumerate(pq.read_table(path).to_pylist(), 1):
            yield f"row {n}", rec
    else:
        raise DataError(
            path,
            None,
            None,
            f"unknown data format {suffix!r} (use .jsonl, .json, .csv, .parquet, "
            "a datasets folder or a .sqlite preference store)",
        )


def _iter_dataset_dir(path: Path) -> Iterator[tuple[str, Record]]:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(path, None, None, "reading a saved datasets folder needs `pip install datasets`") from exc
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(path, None, None, f"not a saved datasets folder ({exc})") from exc
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[next(iter(ds))]
    for n, rec in enumerate(ds, 1):
        yield f"row {n}", dict(rec)


def _maybe_json(value: str) -> Any:
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return value
    return value


def _must_be_object(rec: Any, path: Path, where: str) -> Record:
    if not isinstance(rec, dict):
        raise DataError(path, where, None, f"expected a JSON object, got {type(rec).__name__}")
    return rec


# ---- record -> normal form ----------------------------------------------------------------------


def _text(value: Any, path: str | Path, where: str | None, field: str) -> str:
    if not isinstance(value, str):
        raise DataError(path, where, field, f"expected text, got {type(value).__name__}")
    return value


def _messages(value: Any, path: str | Path, where: str | None, field: str) -> list[Message]:
    """A message list in any accepted spelling -> [{"role", "content"}]."""
    if not isinstance(value, list) or not value:
        raise DataError(path, where, field, "expected a non-empty list of messages")
    out: list[Message] = []
    for i, msg in enumerate(value):
        sub = f"{field}[{i}]"
        if not isinstance(msg, dict):
            raise DataError(path, where, sub, f"expected a message object, got {type(msg).__name__}")
        role = msg.get("role", msg.get("from"))
        if role is None:
            raise DataError(path, where, sub, 'a message needs "role" (or "from")')
        norm = ROLE_ALIASES.get(str(role).lower())
        if norm is None:
            raise DataError(path, where, f"{sub}.role", f"unknown role {role!r} (use user, assistant or system)")
        content = msg.get("content", msg.get("value"))
        if content is None:
            raise DataError(path, where, sub, 'a message needs "content" (or "value")')
        out.append({"role": norm, "content": _text(content, path, where, f"{sub}.content")})
    return out


def sft_messages(rec: Record, path: str | Path = "<data>", where: str | None = None) -> list[Message]:
    if "messages" in rec or "conversations" in rec:
        field = "messages" if "messages" in rec else "conversations"
        msgs = _messages(rec[field], path, where, field)
    elif "instruction" in rec:
        if "output" not in rec:
            raise DataError(path, where, "output", "an instruction record needs an output")
        prompt = _text(rec["instruction"], path, where, "instruction")
        extra = rec.get("input") or ""
        if extra:
            prompt += "\n\n" + _text(extra, path, where, "input")
        msgs = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": _text(rec["output"], path, where, "output")},
        ]
    elif "prompt" in rec and ("response" in rec or "completion" in rec):
        field = "response" if "response" in rec else "completion"
        msgs = [
            {"role": "user", "content": _text(rec["prompt"], path, where, "prompt")},
            {"role": "assistant", "content": _text(rec[field], path, where, field)},
        ]
    else:
        raise DataError(
            path,
            where,
            None,
            "not an SFT record: expected messages, conversations, "
            f"instruction/output or prompt/response; got keys {sorted(rec)}",
        )
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataError(path, where, "messages", "no assistant message: nothing to learn from")
    return msgs


def _side(value: Any, path: str | Path, where: str | None, field: str) -> list[Message]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    return _messages(value, path, where, field)


def preference_pair(rec: Record, path: str | Path = "<data>", where: str | None = None) -> Pair:
    for key in ("chosen", "rejected"):
        if key not in rec:
            raise DataError(path, where, key, f"a preference record needs {key!r}; got keys {sorted(rec)}")
    if "context" in rec or "prompt" in rec:
        field = "context" if "context" in rec else "prompt"
        value = rec[field]
        prompt = (
            [{"role": "user", "content": value}] if isinstance(value, str) else _messages(value, path, where, field)
        )
        chosen = _side(rec["chosen"], path, where, "chosen")
        rejected = _side(rec["rejected"], path, where, "rejected")
    else:  # implicit prompt: two whole conversations sharing their opening
        c = _messages(rec["chosen"], path, where, "chosen")
        r = _messages(rec["rejected"], path, where, "rejected")
        n = 0
        while n < min(len(c), len(r)) - 1 and c[n] == r[n]:
            n += 1
        prompt, chosen, rejected = c[:n], c[n:], r[n:]
    if not prompt:
        raise DataError(path, where, "prompt", "empty prompt")
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        if not side or side[-1]["role"] != "assistant":
            raise DataError(path, where, name, "must end with an assistant answer")
    return Pair(prompt, chosen, rejected)


def _load(path: str | Path, limit: int, parse: Callable[[Record, str | Path, str], _T]) -> list[_T]:
    """Every record through ``parse`` (to normal form); the first bad record stops with a DataError."""
    out: list[_T] = []
    for where, rec in iter_records(path):
        out.append(parse(rec, path, where))
        if limit and len(out) >= limit:
            break
    if not out:
        raise DataError(path, None, None, "no records")
    return out


def load_sft(path: str | Path, limit: int = 0) -> list[list[Message]]:
    return _load(path, limit, sft_messages)


def load_preferences(path: str | Path, limit: int = 0) -> list[Pair]:
    return _load(path, limit, preference_pair)


def prompt_messages(rec: Record, path: str | Path = "<data>", where: str | None = None) -> list[Message]:
    """A PPO prompt: ColossalChat ``{"messages": [...]}`` (a trailing assistant turn is dropped),
    ``{"prompt": str | messages}``, ``{"instruction", "input"}``, or a CSV row with a prompt column."""
    field: str | None
    for field in ("messages", "conversations", "context"):
        if field in rec:
            msgs = _messages(rec[field], path, where, field)
            while msgs and msgs[-1]["role"] == "assistant":
                msgs = msgs[:-1]
            break
    else:
        field = next((k for k in ("prompt", "instruction", "question", "query") if k in rec), None)
        if field is None:
            raise DataError(
                path,
                where,
                None,
                f"not a prompt record: expected messages, prompt, instruction or question; got keys {sorted(rec)}",
            )
        value = rec[field]
        if isinstance(value, list):
            msgs = _messages(value, path, where, field)
        else:
            text = _text(value, path, where, field)
            if field == "instruction" and rec.get("input"):
                text += "\n\n" + _text(rec["input"], path, where, "input")
            msgs = [{"role": "user", "content": text}]
    if not msgs or msgs[-1]["role"] != "user":
        raise DataError(path, where, field, "a prompt must end with a user message")
    if not msgs[-1]["content"].strip():
        raise DataError(path, where, field, "empty prompt")
    return msgs


def load_prompts(path: str | Path, limit: int = 0) -> list[list[Message]]:
    return _load(path, limit, prompt_messages)


@dataclass
class Labelled:
    """KTO's unpaired example: an answer to a prompt, marked desirable or not."""

    prompt: list[Message]
    completion: list[Message]
    desirable: bool


def labelled_examples(rec: Record, path: str | Path = "<data>", where: str | None = None) -> list[Labelled]:
    """TRL's unpaired ``{"prompt", "completion", "label": bool}``, or a preference pair, which gives one
    desirable (chosen) and one undesirable (rejected) example."""
    if "chosen" in rec or "rejected" in rec:
        pair = preference_pair(rec, path, where)
        return [Labelled(pair.prompt, pair.chosen, True), Labelled(pair.prompt, pair.rejected, False)]
    for key in ("prompt", "completion", "label"):
        if key not in rec:
            raise DataError(
                path, where, key, f"an unpaired record needs prompt, completion and label; got keys {sorted(rec)}"
            )
    label = rec["label"]
    if isinstance(label, str) and label.lower() in ("true", "false", "1", "0"):
        label = label.lower() in ("true", "1")  # a CSV's text
    if not isinstance(label, bool) and label not in (0, 1):
        raise DataError(path, where, "label", f"must be true or false, not {label!r}")
    value = rec["prompt"]
    prompt = [{"role": "user", "content": value}] if isinstance(value, str) else _messages(value, path, where, "prompt")
    completion = _side(rec["completion"], path, where, "completion")
    if not completion or completion[-1]["role"] != "assistant":
        raise DataError(path, where, "completion", "must end with an assistant answer")
    return [Labelled(prompt, completion, bool(label))]


def load_labelled(path: str | Path, limit: int = 0) -> list[Labelled]:
    groups = _load(path, limit, labelled_examples)
    return [x for group in groups for x in group]


def load_for(stage: str, path: str | Path, limit: int = 0) -> list[Any]:
    """What ``stage`` trains on, read from ``path`` (one table, so the CLI's check before a run folder
    exists and the trainer read the same): SFT conversations, preference pairs, KTO's labelled answers,
    PPO prompts, or GRPO's prompts with their columns."""
    loaders: dict[str, Callable[[str | Path, int], list[Any]]] = {
        "sft": load_sft,
        "rm": load_preferences,
        "ppo": load_prompts,
        "dpo": load_preferences,
        "orpo": load_preferences,
        "kto": load_labelled,
        "grpo": load_prompt_rows,
    }
    if stage not in loaders:
        raise ValueError(f"no data format for stage {stage!r}")
    return loaders[stage](path, limit)


def sniff(path: str | Path, preview: int = 3) -> tuple[str, int, list[Pair | list[Message]]]:
    """What a data file holds, checked whole: ("sft" | "preferences" | "prompts", record count, the first
    ``preview`` records in normal form). The first record decides the kind; a bad record raises
    DataError naming its line. The app validates and previews a file with this as soon as it is typed."""
    kind, count = "", 0
    parse: Callable[[Record, str | Path, str], Pair | list[Message]] | None = None
    first: list[Pair | list[Message]] = []
    for where, rec in iter_records(path):
        if parse is None:
            if "chosen" in rec or "rejected" in rec:
                kind, parse = "preferences", preference_pair
            else:
                try:
                    sft_messages(rec, path, where)
                    kind, parse = "sft", sft_messages
                except DataError:
                    kind, parse = "prompts", prompt_messages
        item = parse(rec, path, where)
        count += 1
        if len(first) < preview:
            first.append(item)
    if parse is None:
        raise DataError(path, None, None, "no records")
    return kind, count, first


PROMPT_FIELDS = ("messages", "conversations", "context", "prompt", "instruction", "input", "question", "query")


def load_prompt_rows(path: str | Path, limit: int = 0) -> list[tuple[list[Message], dict[str, Any]]]:
    """GRPO's prompts, each with the record's other columns (``answer``, ...): reward functions get them
    by name."""

    def row(rec: Record, p: str | Path, where: str) -> tuple[list[Message], dict[str, Any]]:
        return prompt_messages(rec, p, where), {k: v for k, v in rec.items() if k not in PROMPT_FIELDS}

    return _load(path, limit, row)
