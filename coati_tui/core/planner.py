"""Memory planner: for every preset x stage, what fits this machine, and the settings that make it fit.

Pure functions, no torch. The bytes are counted in coati_tui.core.estimate (its docstring says how);
here: the machine and its margins, the verdicts, the search (coati_tui.core.plan_search) and the pick.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from coati_tui.core import plan_search
from coati_tui.core.estimate import estimate
from coati_tui.core.hardware import Profile
from coati_tui.core.modelinfo import Arch
from coati_tui.core.presets import Preset
from coati_tui.core.units import fmt_bytes

GIB = 1024**3
STAGES = ("sft", "rm", "ppo")  # the plan table's columns; plan(stages=...) takes any of run_config.STAGES
CUDA_CONTEXT = int(0.5 * GIB)  # the CUDA context + cuBLAS workspaces; not in max_memory_allocated
GPU_MARGIN = 0.10  # kept free for the allocator's fragmentation and spikes
CPU_MARGIN = 0.10  # kept free for the OS and the UI


@dataclass
class Machine:
    """What the plan is for: this machine (from its profile) or one described on the command line."""

    gpu_total_bytes: int  # 0: no CUDA GPU
    cpu_total_bytes: int
    gpu_name: str = ""
    bf16: bool = True
    described: bool = False  # a hypothetical machine: assume its stacks are installed
    stacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    why_no_gpu: str | None = None

    @classmethod
    def from_profile(cls, profile: Profile) -> Machine:
        gpu = profile.gpus[0] if profile.gpus else None
        return cls(
            gpu_total_bytes=gpu.total_bytes if gpu else 0,
            cpu_total_bytes=profile.cpu.ram_total_bytes,
            gpu_name=gpu.name if gpu else "",
            bf16=gpu.bf16 if gpu else False,
            stacks=profile.stacks,
            why_no_gpu=None if gpu else (profile.nvml_error or "NVML lists no GPU"),
        )

    @classmethod
    def described_as(cls, gpu_bytes: int, cpu_bytes: int) -> Machine:
        return cls(gpu_total_bytes=gpu_bytes, cpu_total_bytes=cpu_bytes, gpu_name="described GPU", described=True)

    @property
    def device(self) -> str:
        return "cuda" if self.gpu_total_bytes else "cpu"

    @property
    def gpu_usable_bytes(self) -> int:
        return max(0, int(self.gpu_total_bytes * (1 - GPU_MARGIN)) - CUDA_CONTEXT)

    @property
    def cpu_usable_bytes(self) -> int:
        return int(self.cpu_total_bytes * (1 - CPU_MARGIN))


@dataclass
class Row:
    preset: str
    stage: str
    device: str  # where the model trains: cuda or cpu
    precision: str
    batch_size: int
    seq_len: int
    gpu_bytes: int  # peak tensor bytes on the GPU (what torch.cuda.max_memory_allocated reports)
    cpu_bytes: int  # peak resident bytes in RAM
    gpu: dict[str, int]  # breakdown, sums to gpu_bytes
    cpu: dict[str, int]  # breakdown, sums to cpu_bytes
    status: str  # fits | tight | does_not_fit | unavailable
    reason: str
    fix: str | None
    speed: float
    alternatives: dict[str, int] = field(default_factory=dict)  # e.g. activations with GC toggled
    changes: dict[str, list[Any]] = field(default_factory=dict)  # {key: [preset's, chosen]} the search made
    settings: dict[str, Any] = field(default_factory=dict)  # the chosen memory settings (plan_search.SETTINGS)
    fixed: dict[str, Any] = field(default_factory=dict)  # the keys the user set, which the search left alone

    @property
    def fits(self) -> bool:
        return self.status == "fits"

    @property
    def overrides(self) -> dict[str, Any]:
        """What to apply to the preset to train what was planned (``{}``: the preset as it is)."""
        return {k: after for k, (_, after) in self.changes.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.preset, "fits": self.fits, "changed": plan_search.describe(self.changes), **asdict(self)}


# ---- verdicts ----------------------------------------------------------------------------------


def unavailable(preset: Preset, machine: Machine) -> tuple[str, str] | None:
    """(reason, fix) when the stack or hardware rules this preset out here."""
    if machine.described:
        return None
    stacks = machine.stacks
    if preset.needs.cuda and machine.device != "cuda":
        return (
            f"needs an NVIDIA GPU with CUDA; none found ({machine.why_no_gpu})",
            "run on a machine with an NVIDIA GPU, or pick a naive preset",
        )
    if preset.needs.colossalai and not stacks.get("colossalai", {}).get("installed"):
        return "needs colossalai, which is not installed", "pip install 'coati-tui[colossalai]'"
    torch = stacks.get("torch", {})
    if machine.device == "cuda" and torch.get("installed") and not torch.get("cuda_build"):
        return (
            f"torch {torch.get('version')} is a CPU build; the GPU cannot be used",
            "pip install --force-reinstall torch  (a CUDA build, from PyPI or download.pytorch.org)",
        )
    if preset.needs.bitsandbytes or preset.quant.bits:
        if not stacks.get("bitsandbytes", {}).get("installed"):
            return "needs bitsandbytes, which is not installed", "pip install bitsandbytes"
        tf = stacks.get("transformers", {}).get("version") or "0"
        if machine.device == "cpu" and int(tf.split(".")[0]) < 5:
            return (
                f"bitsandbytes 4-bit on CPU needs transformers >= 5; this stack has {tf}",
                "use the default install (not the [colossalai] extra), or a CUDA GPU",
            )
    return None


def _biggest(parts: dict[str, int]) -> str:
    name, size = max(parts.items(), key=lambda kv: kv[1])
    return f"{name.replace('_', ' ')} {fmt_bytes(size)}"


def verdict(row: Row, machine: Machine) -> tuple[str, str]:
    if row.device == "cuda":
        if row.gpu_bytes > machine.gpu_usable_bytes:
            need = row.gpu_bytes + CUDA_CONTEXT
            status = "tight" if need <= machine.gpu_total_bytes else "does_not_fit"
            return status, (
                f"needs {fmt_bytes(need)} GPU ({_biggest(row.gpu)}, + {fmt_bytes(CUDA_CONTEXT)} CUDA context), "
                f"card has {fmt_bytes(machine.gpu_total_bytes)}, {fmt_bytes(machine.gpu_usable_bytes)} usable "
                f"with a {GPU_MARGIN:.0%} margin"
            )
    if row.cpu_bytes > machine.cpu_usable_bytes:
        status = "tight" if row.cpu_bytes <= machine.cpu_total_bytes else "does_not_fit"
        return status, (
            f"needs {fmt_bytes(row.cpu_bytes)} CPU RAM ({_biggest(row.cpu)}), machine has "
            f"{fmt_bytes(machine.cpu_total_bytes)}, {fmt_bytes(machine.cpu_usable_bytes)} usable"
        )
    where = (
        f"{fmt_bytes(row.gpu_bytes + CUDA_CONTEXT)} of {fmt_bytes(machine.gpu_total_bytes)} GPU, "
        if row.device == "cuda"
        else "on CPU, "
    )
    return "fits", f"{where}{fmt_bytes(row.cpu_bytes)} of {fmt_bytes(machine.cpu_total_bytes)} RAM"


@dataclass
class Plan:
    model: str
    model_type: str
    params: int
    exact_params: bool
    machine: Machine
    rows: list[Row]
    recommended: str | None
    recommended_by_stage: dict[str, str | None]

    def to_dict(self) -> dict[str, Any]:
        m = self.machine
        return {
            "model": self.model,
            "model_type": self.model_type,
            "params": self.params,
            "exact_params": self.exact_params,
            "machine": {
                "device": m.device,
                "gpu_name": m.gpu_name,
                "gpu_total_bytes": m.gpu_total_bytes,
                "gpu_usable_bytes": m.gpu_usable_bytes,
                "cpu_total_bytes": m.cpu_total_bytes,
                "described": m.described,
            },
            "presets": [r.to_dict() for r in self.rows],
            "recommended": self.recommended,
            "recommended_by_stage": self.recommended_by_stage,
        }


def plan(
    arch: Arch,
    presets: dict[str, Preset],
    machine: Machine,
    stages: tuple[str, ...] = STAGES,
    batch_size: int | None = None,
    seq_len: int | None = None,
    model: str = "",
    fixed: Collection[str] = (),
    allow_shorter: bool = False,
) -> Plan:
    """Every preset x stage on ``machine``: its own settings when they fit, else the first settings of
    plan_search's that do. ``fixed``: the preset keys the user set (``batch_size`` and ``seq_len`` are
    two of them), which the search leaves alone; ``allow_shorter``: it may shorten max length and rollouts."""
    pinned = {k: v for k, v in (("train.batch_size", batch_size), ("train.max_len", seq_len)) if v}
    keep = set(fixed) | set(pinned)
    rows = []
    for preset in presets.values():
        base = preset.with_overrides(pinned) if pinned else preset
        blocked = unavailable(base, machine)
        rows += [plan_row(arch, base, stage, machine, keep, allow_shorter, blocked) for stage in stages]

    def best(candidates: list[Row]) -> str | None:
        fitting = [r for r in candidates if r.fits]
        if not fitting:
            return None
        return max(fitting, key=lambda r: (r.speed, r.batch_size, -r.gpu_bytes, -r.cpu_bytes)).preset

    by_stage = {s: best([r for r in rows if r.stage == s]) for s in stages}
    fits_all = [name for name in presets if all(r.fits for r in rows if r.preset == name)]
    overall = best([r for r in rows if r.preset in fits_all and r.stage == stages[-1]])
    return Plan(model, arch.model_type, arch.param_count("lm"), arch.exact, machine, rows, overall, by_stage)


def estimate_row(arch: Arch, preset: Preset, stage: str, machine: Machine, overrides: dict[str, Any]) -> Row:
    """The estimate and verdict of ``preset`` with ``overrides`` for ``stage`` on ``machine``."""
    p = preset.with_overrides(overrides) if overrides else preset
    batch, seq = p.train.batch_size, p.train.max_len
    dev, host, alt, precision = estimate(arch, p, stage, batch, seq, machine.device, machine.bf16)
    changed = plan_search.changes(preset, overrides)
    row = Row(
        preset.name,
        stage,
        machine.device,
        precision,
        p.train.batch_size,
        p.train.max_len,
        sum(dev.values()),
        sum(host.values()),
        dev,
        host,
        "fits",
        "",
        None,
        plan_search.expected_speed(preset, overrides),
        alt,
        changed,
        {k: plan_search.get(p, k) for k in plan_search.SETTINGS if plan_search.applies(p, k)},
    )
    row.status, row.reason = verdict(row, machine)
    return row


def plan_row(
    arch: Arch,
    preset: Preset,
    stage: str,
    machine: Machine,
    fixed: Collection[str] = (),
    allow_shorter: bool = False,
    blocked: tuple[str, str] | None = None,
) -> Row:
    """One preset x stage: the first of plan_search.candidates that fits, or the nearest miss and its fixes."""
    tried = []
    for overrides in plan_search.candidates(preset, stage, fixed, allow_shorter):
        row = estimate_row(arch, preset, stage, machine, overrides)
        row.fixed = {k: plan_search.get(preset, k) for k in sorted(fixed) if plan_search.known(k)}
        if blocked:
            row.status, row.reason, row.fix = "unavailable", blocked[0], blocked[1]
            return row
        if row.fits:
            if row.changes:
                row.reason = f"with {plan_search.describe(row.changes)}: {row.reason}"
            return row
        tried.append(row)
    nearest = min(tried, key=lambda r: shortfall(r, machine))
    nearest.fix = _what_would_fit(arch, preset, stage, machine, fixed, allow_shorter, nearest)
    if nearest.changes:
        nearest.reason += f", even with {plan_search.describe(nearest.changes)}"
    return nearest


def shortfall(row: Row, machine: Machine) -> int:
    """Bytes over the usable memory (the larger side), 0 when the row fits."""
    gpu = row.gpu_bytes - machine.gpu_usable_bytes if row.device == "cuda" else 0
    return max(0, gpu, row.cpu_bytes - machine.cpu_usable_bytes)


def _what_would_fit(
    arch: Arch, preset: Preset, stage: str, machine: Machine, fixed: Collection[str], allow_shorter: bool, near: Row
) -> str:
    """The nearest miss's fixes: more memory by how much, the user's fixed keys, a shorter length, a smaller model."""
    fixes = []
    if near.device == "cuda" and near.gpu_bytes > machine.gpu_usable_bytes:
        fixes.append(f"{fmt_bytes(near.gpu_bytes - machine.gpu_usable_bytes)} more GPU memory")
    if near.cpu_bytes > machine.cpu_usable_bytes:
        fixes.append(f"{fmt_bytes(near.cpu_bytes - machine.cpu_usable_bytes)} more RAM")
    if fixed:
        for overrides in plan_search.candidates(preset, stage, (), True)[1:]:
            if any(k in plan_search.SHORTER and k not in fixed and not allow_shorter for k in overrides):
                continue  # shortens what the user did not allow to be shortened
            row = estimate_row(arch, preset, stage, machine, overrides)
            freed = [k for k in row.changes if k in fixed]
            if row.fits and freed:
                mine = ", ".join(f"{k} = {plan_search.get(preset, k)}" for k in freed)
                fixes.append(f"your {mine} keeps it from fitting: {plan_search.describe(row.changes)} would fit")
                break
    if not allow_shorter:
        for overrides in plan_search.shorter_fixes(preset, stage, fixed):
            row = estimate_row(arch, preset, stage, machine, overrides)
            if row.fits:
                fixes.append(f"with --allow-shorter it fits at {plan_search.describe(row.changes)}")
                break
    return "; ".join(fixes + ["a smaller model"])


def smaller(result: Plan, stage: str, failed: str, kind: str) -> Row | None:
    """After ``failed`` ran out of memory (``kind`` gpu_oom / cpu_oom) in ``stage``: the fastest other
    preset that fits and needs less of the memory that ran out, or None."""
    side = "gpu_bytes" if kind == "gpu_oom" and result.machine.device == "cuda" else "cpu_bytes"
    rows = [r for r in result.rows if r.stage == stage]
    before = next((r for r in rows if r.preset == failed), None)
    limit = getattr(before, side) if before else float("inf")
    options = [r for r in rows if r.preset != failed and r.fits and getattr(r, side) < limit]
    if not options:
        return None
    return max(options, key=lambda r: (r.speed, -getattr(r, side)))
