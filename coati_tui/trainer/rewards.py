"""GRPO's verifiable rewards: plain Python functions that score each answer, weighted and summed.

A ``--reward-fn`` spec names a built-in or ``path/to/file.py:func``, with an optional ``=W`` weight
(default 1.0): ``exact_answer``, ``length=0.2``, ``C:/x/r.py:fmt=0.5`` (a path splits at its last ``:``).
Every function is called as TRL calls one, ``fn(prompts, completions, **columns) -> list[float]``:
``prompts[i]`` is the last user message of answer i's prompt, ``columns`` the prompt file's other columns
(``answer``, ...), one value per answer. A user's file is imported only because the user named it.

The built-ins (no torch):

- ``exact_answer``: 1.0 when the answer equals the ``answer`` column, else 0.0 (0.0 too where a row's
  ``answer`` is empty). The answer is the content of the last ``\\boxed{...}`` whose braces close; else
  the first non-empty line after the last ``####``; else, when the expected answer is a number, the last
  number in the text; else the whole text, or, for a non-numeric expected answer, the text after the
  last ``:`` or ``：`` ("答案是：北京。" -> "北京"). Both sides are compared case-folded, without
  surrounding whitespace and ``.,。！!``; two numbers compare by value, with commas between groups of three
  digits dropped ("1,000" == "1000", "3.0" == "3").
- ``format``: 1.0 when the stripped answer matches ``format_regex`` (``re.fullmatch``, ``re.DOTALL``;
  by default ``(?s).*\\S.*``: anything not blank), else 0.0.
- ``length``: 0.0 up to ``length_target`` characters (default 200), then ``-(len - target) / target``,
  never below -1.0.
- ``demo``: the demo task's true score (``data.demo.true_score``: liked fruits among the first three / 3).
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import numbers
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from coati_tui.core.errors import ConfigError
from coati_tui.data.demo import true_score

BUILTINS = ("exact_answer", "format", "length", "demo")
DEFAULTS: dict[str, Any] = {"format_regex": r"(?s).*\S.*", "length_target": 200}
NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
PUNCT = " \t\r\n\u3000.,。！!"
_modules = itertools.count(1)  # a unique module name for each user file imported


class RewardError(ConfigError):
    """A reward function that failed or returned what is not one finite number per answer; the message
    names its file and function. Its kind is ``config`` (inherited): the fix is in the user's file."""


@dataclass
class RewardFn:
    name: str  # shown in events and the UI: the builtin's name, or the user's function name
    fn: Callable[..., Any]
    weight: float
    source: str  # "builtin" or the user's file path


# ---- specs and loading ---------------------------------------------------------------------------
def parse_spec(spec: str) -> tuple[str, str, float]:
    """(source, name, weight) from a --reward-fn spec: "exact_answer", "format", "length", "demo" (builtins),
    or "path/to/file.py:func"; an optional "=W" suffix is the weight (default 1.0): "my.py:fmt=0.5", "length=0.2"."""
    head, weight = spec.strip(), 1.0
    body, eq, tail = head.rpartition("=")
    if eq and not any(c in tail for c in ":/\\"):  # an "=" in a folder name is not a weight
        head, weight = body.strip(), _weight(tail.strip(), spec)
    if ":" not in head:
        if head not in BUILTINS:
            hint = "; a file needs its function: file.py:func" if head.endswith(".py") else ""
            raise ConfigError(f"reward function {spec!r}: no builtin {head!r} (builtins: {', '.join(BUILTINS)}){hint}")
        return "builtin", head, weight
    path, _, name = head.rpartition(":")
    if not path.strip() or not name.strip().isidentifier():
        raise ConfigError(f"reward function {spec!r}: expected path/to/file.py:function_name, or a builtin")
    return path.strip(), name.strip(), weight


def _weight(text: str, spec: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight):
        raise ConfigError(f"reward function {spec!r}: the weight {text!r} (after '=') is not a finite number")
    return weight


def load(specs: list[str], settings: Mapping[str, Any] | None = None) -> list[RewardFn]:
    """Every spec loaded. A user's file is imported (importlib.util.spec_from_file_location, a unique module
    name) only because the user named it. Errors raise coati_tui.core.errors.ConfigError naming the spec, the
    file and the function: file missing, not a .py file, import failed (its exception type and message, and
    the line for a SyntaxError), no such function, not callable, unknown builtin (list the builtins), a bad
    weight. ``settings`` configure builtins (keys: "format_regex", "length_target"); unknown keys ignored."""
    opts = {**DEFAULTS, **{k: v for k, v in (settings or {}).items() if v is not None}}
    modules: dict[Path, Any] = {}  # a file named twice is imported once
    out = []
    for spec in specs:
        source, name, weight = parse_spec(spec)
        if source == "builtin":
            out.append(RewardFn(name, _builtin(name, opts), weight, source))
        else:
            out.append(RewardFn(name, _user_fn(spec, Path(source), name, modules), weight, source))
    return out


def _user_fn(spec: str, path: Path, name: str, modules: dict[Path, Any]) -> Callable[..., Any]:
    where = f"reward function {spec!r}: file {path}"
    if not path.exists():
        raise ConfigError(f"{where} does not exist")
    if not path.is_file() or path.suffix != ".py":
        raise ConfigError(f"{where} is not a .py file")
    key = path.resolve()
    if key not in modules:
        modules[key] = _import(path, where)
    fn = getattr(modules[key], name, None)
    if fn is None:
        mod = modules[key]
        have = sorted(k for k, v in vars(mod).items() if callable(v) and getattr(v, "__module__", "") == mod.__name__)
        raise ConfigError(f"{where} has no function {name!r} (functions there: {', '.join(have) or 'none'})")
    if not callable(fn):
        raise ConfigError(f"{where}: {name!r} is a {type(fn).__name__}, not a function")
    return fn  # type: ignore[no-any-return]


def _import(path: Path, where: str) -> Any:
    stem = re.sub(r"\W", "_", path.stem)
    mod_name = f"coati_tui_reward_{next(_modules)}_{stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{where} cannot be imported as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses and pickle look their module up by name
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(mod_name, None)
        code = f": `{e.text.strip()}`" if e.text else ""
        raise ConfigError(f"{where} does not import: SyntaxError: {e.msg} at {e.filename}:{e.lineno}{code}") from e
    except (Exception, SystemExit) as e:
        sys.modules.pop(mod_name, None)
        raise ConfigError(f"{where} does not import: {type(e).__name__}: {e}{_frame(e, path)}") from e
    return module


def _frame(exc: BaseException, path: Path) -> str:
    """ " at FILE:LINE: `code`" for the innermost frame of ``exc`` in the user's file, or ""."""
    mine = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    if not mine:
        return ""
    code = f": `{mine[-1].line}`" if mine[-1].line else ""
    return f" at {path}:{mine[-1].lineno}{code}"


# ---- scoring -------------------------------------------------------------------------------------
def score(
    fns: list[RewardFn], prompts: list[str], completions: list[str], columns: Mapping[str, list[Any]]
) -> tuple[list[float], dict[str, list[float]]]:
    """(weighted total per completion, each function's raw scores by name). Each fn is called as
    fn(prompts, completions, **columns) -> list[float] (TRL's signature): prompts[i] is the last user message
    of completion i's prompt, columns are the prompt file's other columns, one value per completion. A fn that
    raises, returns a wrong count, or returns a non-number (bool, None, str) or a non-finite number raises
    RewardError(ConfigError) with one message naming the file and function (and the index and value for a bad
    element, the exception's type and message and the user's own frame line for a raise)."""
    total = [0.0] * len(completions)
    per_name: dict[str, list[float]] = {}
    for f in fns:
        scores = _call(f, prompts, completions, columns)
        key, n = f.name, 1
        while key in per_name:
            n += 1
            key = f"{f.name}#{n}"
        per_name[key] = scores
        total = [t + f.weight * s for t, s in zip(total, scores)]
    return total, per_name


def _who(f: RewardFn) -> str:
    return f"builtin reward {f.name}" if f.source == "builtin" else f"reward function {f.name} in {f.source}"


def _call(f: RewardFn, prompts: list[str], completions: list[str], columns: Mapping[str, list[Any]]) -> list[float]:
    try:
        out = f.fn(list(prompts), list(completions), **{k: list(v) for k, v in columns.items()})
    except Exception as e:
        if f.source == "builtin" and isinstance(e, RewardError):
            raise  # it already says what is wrong
        line = _frame(e, Path(f.source)) if f.source != "builtin" else ""
        raise RewardError(f"{_who(f)} raised {type(e).__name__}: {e}{line}") from e
    if isinstance(out, (str, bytes, Mapping)) or not hasattr(out, "__len__"):
        raise RewardError(f"{_who(f)} returned a {type(out).__name__}, not a list of {len(completions)} floats")
    out = list(out)
    if len(out) != len(completions):
        raise RewardError(f"{_who(f)} returned {len(out)} scores for {len(completions)} completions")
    for i, v in enumerate(out):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise RewardError(f"{_who(f)}: score {i} is {v!r} ({type(v).__name__}), not a finite number")
    return [float(v) for v in out]


# ---- the built-ins -------------------------------------------------------------------------------
def _builtin(name: str, opts: Mapping[str, Any]) -> Callable[..., list[float]]:
    if name == "format":
        return _format_fn(opts["format_regex"])
    if name == "length":
        return _length_fn(opts["length_target"])
    return {"exact_answer": exact_answer, "demo": demo}[name]


def exact_answer(prompts: list[str], completions: list[str], **columns: list[Any]) -> list[float]:
    if "answer" not in columns:
        have = ", ".join(sorted(columns)) or "none"
        raise RewardError(f"builtin reward exact_answer needs an 'answer' column in the prompts (columns: {have})")
    return [_exact(c, right) for c, right in zip(completions, columns["answer"])]


def _exact(completion: str, right: Any) -> float:
    expected = "" if right is None else str(right)
    return float(bool(expected.strip()) and _matches(completion, expected))


def _matches(completion: str, expected: str) -> bool:
    numeric = _number(_norm(expected)) is not None
    return any(_same(got, expected) for got in _candidates(completion, numeric))


def _candidates(text: str, numeric: bool) -> list[str]:
    boxed = _last_boxed(text)
    if boxed is not None:
        return [boxed]
    if "####" in text:
        lines = [ln for ln in text.rpartition("####")[2].splitlines() if ln.strip()]
        return lines[:1] or [""]
    if numeric:
        found = NUMBER.findall(text)
        return [found[-1] if found else text]
    colon = max(text.rfind(":"), text.rfind("："))
    return [text] if colon < 0 else [text, text[colon + 1 :]]


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    while start >= 0:
        depth, opened = 0, start + len("\\boxed")
        for j in range(opened, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[opened + 1 : j]
        start = text.rfind("\\boxed{", 0, start)
    return None


def _norm(text: str) -> str:
    return text.casefold().strip(PUNCT)


def _number(text: str) -> Decimal | None:
    return Decimal(text.replace(",", "")) if NUMBER.fullmatch(text) else None


def _same(got: str, expected: str) -> bool:
    g, e = _norm(got), _norm(expected)
    ng, ne = _number(g), _number(e)
    return ng == ne if ng is not None and ne is not None else g == e


def _format_fn(regex: Any) -> Callable[..., list[float]]:
    try:
        pattern = re.compile(str(regex), re.DOTALL)
    except re.error as e:
        raise ConfigError(f"setting format_regex: {regex!r} is not a valid regular expression ({e})") from e

    def fmt(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return [float(pattern.fullmatch(c.strip()) is not None) for c in completions]

    return fmt


def _length_fn(target: Any) -> Callable[..., list[float]]:
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise ConfigError(f"setting length_target: {target!r} is not a whole number of characters, 1 or more")

    def length(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return [max(-1.0, -(len(c) - target) / target) if len(c) > target else 0.0 for c in completions]

    return length


def demo(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    return [true_score([{"role": "user", "content": p}], c) for p, c in zip(prompts, completions)]
