"""The package's shape, read from its source with ``ast`` (nothing is imported):

- ui/ and host/ (the app's process) import nothing from trainer/ or worker/, and reach no module that
  imports torch (or a library that imports it) through any chain of imports;
- core/ (imported by every side) imports nothing from coati_tui outside core/;
- no import cycles (a package's ``__init__`` importing its own children is not one);
- no file over ``MAX_LINES`` lines;
- every ``torch.load`` passes ``weights_only=True``.

Every import counts, function-level ones included, relative ones resolved. Imports under
``if TYPE_CHECKING:`` count for the layering rules (the folders say which side may know which) but not for
cycles or torch reachability, since they never run.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.once  # app/host side: its outcome does not hang on the torch stack (CI: once)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "coati_tui"
MAX_LINES = 450
# torch, and the libraries that import torch when they are imported
HEAVY = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "bitsandbytes",
    "colossalai",
    "gptqmodel",
    "optimum",
    "trl",
    "safetensors.torch",
)
APP_SIDE = ("coati_tui.ui", "coati_tui.host", "coati_tui.serve")
CHILD_SIDE = ("coati_tui.trainer", "coati_tui.worker")


@dataclass(frozen=True)
class Import:
    line: int
    text: str  # the statement as written
    target: str  # the absolute dotted name it imports (a module, or a module's attribute)
    runtime: bool  # False under ``if TYPE_CHECKING:``


@dataclass
class Module:
    name: str
    path: Path
    is_pkg: bool
    source: str
    imports: list[Import] = field(default_factory=list)
    torch_loads: list[tuple[int, str]] = field(default_factory=list)  # (line, call) without weights_only=True


def module_name(path: Path, root: Path = ROOT) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts), is_pkg


def resolve(module: str | None, level: int, current: str, is_pkg: bool) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written in ``current``."""
    if not level:
        return module or ""
    base = current.split(".") if is_pkg else current.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside the body of an ``if TYPE_CHECKING:`` (its else branch runs)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                inside.update(id(n) for n in ast.walk(stmt))
    return inside


def parse_module(name: str, source: str, is_pkg: bool, path: Path | None = None) -> Module:
    mod = Module(name, path or Path(name.replace(".", "/") + ".py"), is_pkg, source)
    tree = ast.parse(source, filename=str(mod.path))
    typing_only = _type_checking_nodes(tree)
    torch_names: set[str] = set()  # what `torch` is called here (import torch as th)
    load_names: set[str] = set()  # from torch import load [as l]
    for node in ast.walk(tree):
        runtime = id(node) not in typing_only
        if isinstance(node, ast.Import):
            text = ast.get_source_segment(source, node) or ""
            for alias in node.names:
                mod.imports.append(Import(node.lineno, text, alias.name, runtime))
                if alias.name == "torch":
                    torch_names.add(alias.asname or "torch")
        elif isinstance(node, ast.ImportFrom):
            text = ast.get_source_segment(source, node) or ""
            base = resolve(node.module, node.level, name, is_pkg)
            for alias in node.names:
                target = base if alias.name == "*" else f"{base}.{alias.name}"
                mod.imports.append(Import(node.lineno, text, target, runtime))
                if base == "torch" and alias.name == "load":
                    load_names.add(alias.asname or "load")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        is_load = (
            isinstance(f, ast.Attribute)
            and f.attr == "load"
            and isinstance(f.value, ast.Name)
            and f.value.id in torch_names
        ) or (isinstance(f, ast.Name) and f.id in load_names)
        if is_load:
            kw = {k.arg: k.value for k in node.keywords}
            v = kw.get("weights_only")
            if not (isinstance(v, ast.Constant) and v.value is True):
                mod.torch_loads.append((node.lineno, ast.get_source_segment(source, node) or "torch.load(...)"))
    return mod


@cache
def package() -> dict[str, Module]:
    mods = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        name, is_pkg = module_name(path)
        mods[name] = parse_module(name, path.read_text(encoding="utf-8"), is_pkg, path)
    return mods


def owner(target: str, mods: dict[str, Module]) -> str | None:
    """The package module an import target lands in (``a.b.func`` -> ``a.b``), or None for other packages."""
    while target:
        if target in mods:
            return target
        if "." not in target:
            return None
        target = target.rsplit(".", 1)[0]
    return None


def in_folder(name: str, folders: tuple[str, ...] | str) -> bool:
    folders = (folders,) if isinstance(folders, str) else folders
    return any(name == f or name.startswith(f + ".") for f in folders)


def edges(mods: dict[str, Module], runtime_only: bool) -> dict[str, dict[str, Import]]:
    """module -> {imported package module: the first import that brings it}."""
    out: dict[str, dict[str, Import]] = {m: {} for m in mods}
    for m, mod in mods.items():
        for imp in mod.imports:
            if runtime_only and not imp.runtime:
                continue
            dest = owner(imp.target, mods)
            if dest is not None and dest != m:
                out[m].setdefault(dest, imp)
    return out


def where(mod: Module, imp: Import) -> str:
    try:
        path = mod.path.relative_to(ROOT)
    except ValueError:
        path = mod.path
    return f"{path}:{imp.line} `{imp.text.splitlines()[0] if imp.text else imp.target}`"


def report(title: str, bad: list[str]) -> str:
    return f"{title}:\n" + "\n".join(bad)


def heavy_import(mod: Module) -> Import | None:
    return next(
        (i for i in mod.imports if i.runtime and any(i.target == h or i.target.startswith(h + ".") for h in HEAVY)),
        None,
    )


# ---- the parser itself, on made-up sources -------------------------------------------------------------


def test_parser_resolves_relative_and_function_level_imports():
    src = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from ..core.events import parse\n"
        "if TYPE_CHECKING:\n"
        "    from coati_tui.trainer.loop import Loop\n"
        "def f():\n"
        "    import torch as th\n"
        "    th.load('x')\n"
        "    th.load('y', weights_only=True)\n"
    )
    mod = parse_module("coati_tui.host.thing", src, is_pkg=False)
    targets = {i.target: i.runtime for i in mod.imports}
    assert targets["coati_tui.host.sibling"] is True
    assert targets["coati_tui.core.events.parse"] is True
    assert targets["coati_tui.trainer.loop.Loop"] is False
    assert targets["torch"] is True
    assert [line for line, _ in mod.torch_loads] == [9]
    pkg = parse_module("coati_tui.ui", "from .screens import home\nfrom .. import entry\n", is_pkg=True)
    assert {i.target for i in pkg.imports} == {"coati_tui.ui.screens.home", "coati_tui.entry"}
    assert heavy_import(parse_module("m", "def f():\n    from safetensors.torch import load_file\n", False))
    assert heavy_import(parse_module("m", "import safetensors\nimport torchvision_like\n", False)) is None


def test_parser_sees_the_whole_package():
    mods = package()
    assert {"coati_tui", "coati_tui.core.events", "coati_tui.host.runs", "coati_tui.ui.app"} <= set(mods)
    # host.build imports the planner inside its function: a function-level import is an edge
    assert "coati_tui.core.planner" in edges(mods, runtime_only=True)["coati_tui.host.build"]
    assert owner("coati_tui.core.events.parse", mods) == "coati_tui.core.events"
    assert owner("torch.nn", mods) is None


# ---- the rules ----------------------------------------------------------------------------------------


def test_app_side_imports_nothing_from_trainer_or_worker():
    mods = package()
    bad = [
        f"{m} imports {dest}: {where(mods[m], imp)}"
        for m, out in edges(mods, runtime_only=False).items()
        if in_folder(m, APP_SIDE)
        for dest, imp in sorted(out.items())
        if in_folder(dest, CHILD_SIDE)
    ]
    assert not bad, report("ui/ and host/ must not import trainer/ or worker/ (they run in the app's process)", bad)


def test_app_side_reaches_no_torch():
    mods = package()
    graph = edges(mods, runtime_only=True)
    # a module's parent packages run too when it is imported
    for m in mods:
        parent = m
        while "." in parent:
            parent = parent.rsplit(".", 1)[0]
            if parent in mods and parent != m:
                graph[m].setdefault(parent, Import(0, f"(parent package of {m})", parent, True))
    heavy = {m: imp for m, mod in mods.items() if (imp := heavy_import(mod)) is not None}
    bad = []
    for start in sorted(m for m in mods if in_folder(m, APP_SIDE)):
        came_from: dict[str, str] = {start: ""}
        order = [start]  # breadth first: the nearest heavy module comes first
        todo = deque([start])
        while todo:
            x = todo.popleft()
            for y in graph[x]:
                if y not in came_from:
                    came_from[y] = x
                    order.append(y)
                    todo.append(y)
        hits = [x for x in order if x in heavy]
        if not hits:
            continue
        x, chain = hits[0], [hits[0]]
        while came_from[chain[-1]]:
            chain.append(came_from[chain[-1]])
        chain.reverse()
        steps = "".join(f"\n    {a} -> {b} ({where(mods[a], graph[a][b])})" for a, b in zip(chain, chain[1:]))
        others = f" (and {', '.join(hits[1:])})" if hits[1:] else ""
        bad.append(
            f"{start} reaches {x}{others}, which imports {heavy[x].target} at {where(mods[x], heavy[x])}" + steps
        )
    assert not bad, report("ui/ and host/ must not reach a module importing torch (or a library that does)", bad)


def test_core_imports_only_core():
    mods = package()
    bad = [
        f"{m} imports {dest}: {where(mods[m], imp)}"
        for m, out in edges(mods, runtime_only=False).items()
        if in_folder(m, "coati_tui.core")
        for dest, imp in sorted(out.items())
        if not in_folder(dest, "coati_tui.core")
    ]
    assert not bad, report("core/ is imported by every side, so it imports nothing else of coati_tui", bad)


def _sccs(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def _related(a: str, b: str) -> bool:
    return a.startswith(b + ".") or b.startswith(a + ".")


def _cycle_path(graph: dict[str, dict[str, Import]], comp: list[str]) -> list[str]:
    """One cycle through the component's first module, as a list of modules (first == last)."""
    members, start = set(comp), comp[0]
    came_from = {start: ""}
    todo = deque([start])
    while todo:
        x = todo.popleft()
        for y in graph[x]:
            if y == start:
                path = [x]  # back from x to start, then turned around
                while came_from[path[-1]]:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if y in members and y not in came_from:
                came_from[y] = x
                todo.append(y)
    return comp


def test_no_import_cycles():
    mods = package()
    graph = edges(mods, runtime_only=True)
    bad = []
    for comp in _sccs(graph):
        # a package's __init__ importing its own children (and they it) is not a cycle worth naming
        if all(any(_related(p, o) for o in comp if o != p) for p in comp):
            continue
        path = _cycle_path(graph, comp)
        steps = "".join(f"\n    {a} -> {b} ({where(mods[a], graph[a][b])})" for a, b in zip(path, path[1:]))
        bad.append(f"cycle among {', '.join(comp)}:{steps}")
    assert not bad, report("import cycles", bad)


def test_no_file_over_max_lines():
    long = sorted(((len(m.source.splitlines()), m.path.relative_to(ROOT)) for m in package().values()), reverse=True)
    bad = [f"{path}: {n} lines" for n, path in long if n > MAX_LINES]
    assert not bad, report(f"files over {MAX_LINES} lines (split them by what they do)", bad)


def test_torch_load_passes_weights_only():
    bad = [
        f"{m.path.relative_to(ROOT)}:{line} `{call.splitlines()[0]}`"
        for m in package().values()
        for line, call in m.torch_loads
    ]
    assert not bad, report("torch.load without weights_only=True (reading a checkpoint must run no code)", bad)


def test_cycle_check_finds_a_made_up_cycle():
    """The cycle check fails on a made-up fault (so a passing run means something)."""
    mods = {
        n: parse_module(n, src, is_pkg=p)
        for n, src, p in [
            ("pkg", "from pkg import a\n", True),
            ("pkg.a", "from pkg import b\n", False),  # pkg -> pkg.a -> pkg.b: no cycle
            ("pkg.b", "", False),
            ("x", "def f():\n    import y\n", False),
            ("y", "from .x import f\n", False),
        ]
    }
    graph = edges(mods, runtime_only=True)
    assert _sccs(graph) == [["x", "y"]]
    assert _cycle_path(graph, ["x", "y"]) == ["x", "y", "x"]


def test_every_package_ships_in_the_wheel():
    """pyproject.toml lists the packages by name: a folder left out installs everywhere but an editable
    checkout (a wheel without coati_tui.trainer.ppo could not run PPO)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / PACKAGE).rglob("__init__.py")}
    listed = set(setup["packages"])
    assert found <= listed, (
        f"packages missing from pyproject.toml's [tool.setuptools] packages: {sorted(found - listed)}"
    )
