#!/usr/bin/env bash
# What a bare GPU machine lacks for bench/gpu_check.py, built here into one folder of wheels small enough to
# copy over; then the one command that installs them there and runs the check.
#
#   bash bench/gpu_carry.sh [--out .whl] [--python-version 3.12] [--cuda 130] [--no-colossalai] [--no-gptq]
#                           [--quick] [--print-only]
#
# The machine (see bench/gpu/README.md) has python, torch (a CUDA build), transformers, peft, accelerate,
# safetensors, tokenizers, typer, rich, psutil, numpy, einops; no network. This folder brings:
#   - coati-tui itself (`pip wheel --no-deps .`) and tomli-w, the one module of its own stack the check
#     imports that such a machine lacks (textual & co. are the app's, not the check's), and cmeel-mimalloc
#     (+ cmeel), the allocator core/procenv.py preloads into every child, so the check runs as users do;
#   - bitsandbytes 0.50.2, the manylinux wheel with its CUDA kernels; --cuda keeps only the kernels of the
#     CUDA builds named (torch.version.cuda without the dot; the lent H200's torch is cu130; `all` keeps the
#     whole 41 MiB wheel);
#   - colossalai 0.5.0 (an sdist on PyPI: built here without extensions, BUILD_EXT=0, to a pure-Python
#     wheel; it compiles its CPU / fused Adam kernels with nvcc the first time they are used, which the
#     check does in the background) with what `import colossalai`, `from colossalai.booster import Booster`,
#     its plugins and HybridAdam import and the machine lacks: einops, galore_torch (which imports
#     bitsandbytes, carried above);
#   - gptqmodel 7.6.0 (an sdist: built with BUILD_CUDA_EXT=0; its torch / triton kernels need no build) with
#     what `import gptqmodel` and loading a GPTQ checkpoint through transformers need: optimum, logbar,
#     device-smi, tokenicer, defuser, threadpoolctl (pure Python) and pypcre (a C extension: built here by a Python of the
#     target version, found as pythonX.Y or under ~/.pyenv; skipped with a message if none is found).
# Everything comes from PyPI through pip (pip download / pip wheel). The folder replaces its old wheels.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=.whl
PYV=3.12
CUDA=130
COLOSSAL=1
GPTQ=1
PRINT_ONLY=0
QUICK=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --python-version) PYV=$2; shift 2 ;;
        --cuda) CUDA=$2; shift 2 ;;
        --no-colossalai) COLOSSAL=0; shift ;;
        --no-gptq) GPTQ=0; shift ;;
        --quick) QUICK=" --quick"; shift ;;
        --print-only) PRINT_ONLY=1; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi
PIP="$PY -m pip --disable-pip-version-check"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
BINARY="--only-binary=:all: --python-version $PYV --implementation cp $PLATFORMS"

# a Python of the target version, for the one C extension (pypcre) built here
target_python() {
    local c
    for c in "python$PYV" "$HOME"/.pyenv/versions/"$PYV"*/bin/python; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -m pip --version >/dev/null 2>&1; then echo "$c"; return 0; fi
    done
    if [ "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$PYV" ]; then echo "$PY"; return 0; fi
    return 1
}

step() {  # print a step; run it unless --print-only
    echo "+ $*"
    if [ "$PRINT_ONLY" = 0 ]; then eval "$@"; fi
}

echo "carry folder: $OUT (target: CPython $PYV, x86-64 Linux; bitsandbytes kernels: CUDA $CUDA)"
if [ "$PRINT_ONLY" = 0 ]; then
    mkdir -p "$OUT"
    rm -f "$OUT"/*.whl
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "== coati-tui, tomli-w, cmeel-mimalloc"
step "$PIP wheel -q --no-deps -w '$OUT' ."
step "$PIP download -q --no-deps $BINARY -d '$OUT' tomli-w==1.2.0"
step "$PIP download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 -d '$OUT' cmeel-mimalloc==3.4.3 cmeel"
check_wheel() {  # every package of the source tree must be in the wheel (pyproject.toml lists them by hand)
    "$PY" - "$OUT" <<'EOF'
import base64, hashlib, sys, zipfile
from pathlib import Path

out = Path(sys.argv[1])
wheel = next(out.glob("coati_tui-*.whl"))
src = sorted(p.parent for p in Path("coati_tui").rglob("__init__.py") if "__pycache__" not in p.parts)
with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
missing = [d for d in src if f"{d.as_posix()}/__init__.py" not in names]
if not missing:
    sys.exit(0)
dotted = ", ".join(".".join(d.parts) for d in missing)
print(f"  WARNING: the wheel lacks {dotted}: pyproject.toml's [tool.setuptools] packages list does not name it, "
      "so a pip-installed coati-tui cannot import it. Added to the carried wheel here; fix pyproject.toml.")
added = {f.as_posix(): f.read_bytes() for d in missing for f in sorted(d.glob("*.py"))}
rows = []
for name, data in added.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    rows.append(f"{name},sha256={digest},{len(data)}")
tmp = wheel.with_suffix(".tmp")
with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for name, data in added.items():
        zout.writestr(name, data)
    for info in zin.infolist():
        data = zin.read(info.filename)
        if info.filename.endswith(".dist-info/RECORD"):
            data = (data.decode().rstrip("\n") + "\n" + "\n".join(rows) + "\n").encode()
        zout.writestr(info, data)
tmp.replace(wheel)
EOF
}
echo "+ check that the wheel holds every package under coati_tui/ (add what pyproject.toml leaves out)"
if [ "$PRINT_ONLY" = 0 ]; then check_wheel; fi

echo "== bitsandbytes (manylinux, CUDA kernels)"
step "$PIP download -q --no-deps $BINARY -d '$TMP' bitsandbytes==0.50.2"
slim_bnb() {  # keep the kernels of the CUDA builds asked for (and the CPU one); RECORD loses the others' lines
    "$PY" - "$TMP" "$OUT" "$CUDA" <<'EOF'
import sys, zipfile
from pathlib import Path

tmp, out, keep = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
src = next(tmp.glob("bitsandbytes-*.whl"))
wanted = None if keep == "all" else {f"libbitsandbytes_cuda{v.strip()}.so" for v in keep.split(",")}


def dropped(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return wanted is not None and base.startswith("libbitsandbytes_") and base != "libbitsandbytes_cpu.so" \
        and base not in wanted


with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out / src.name, "w", zipfile.ZIP_DEFLATED) as zout:
    names = zin.namelist()
    if wanted is not None:
        have = {n.rsplit("/", 1)[-1] for n in names}
        missing = sorted(wanted - have)
        if missing:
            sys.exit(f"bitsandbytes wheel has no {', '.join(missing)}; it has "
                     + ", ".join(sorted(h for h in have if h.startswith("libbitsandbytes_cuda"))))
    for name in names:
        if dropped(name):
            continue
        data = zin.read(name)
        if name.endswith(".dist-info/RECORD"):
            rows = data.decode().splitlines()
            data = ("\n".join(r for r in rows if not dropped(r.split(",", 1)[0])) + "\n").encode()
        zout.writestr(zin.getinfo(name), data)
print(f"  {src.name}: {src.stat().st_size / 2**20:.1f} MiB -> {(out / src.name).stat().st_size / 2**20:.1f} MiB")
EOF
}
echo "+ keep only the CUDA $CUDA kernels and the CPU library in that wheel (its RECORD too) -> $OUT"
if [ "$PRINT_ONLY" = 0 ]; then slim_bnb; fi

if [ "$COLOSSAL" = 1 ]; then
    echo "== colossalai 0.5.0 (pure-Python wheel) + einops, galore_torch"
    step "BUILD_EXT=0 $PIP wheel -q --no-deps -w '$OUT' colossalai==0.5.0"
    step "$PIP download -q --no-deps $BINARY -d '$OUT' einops==0.8.2 galore-torch==1.0"
fi

if [ "$GPTQ" = 1 ]; then
    echo "== gptqmodel 7.6.0 (BUILD_CUDA_EXT=0) + optimum, logbar, device-smi, tokenicer, defuser, pypcre"
    if TPY=$(target_python); then
        step "BUILD_CUDA_EXT=0 $PIP wheel -q --no-deps -w '$OUT' gptqmodel==7.6.0 optimum==2.3.0 logbar==0.4.15 \
device-smi==0.5.7 tokenicer==0.0.14 defuser==0.0.28 threadpoolctl==3.8.0"
        step "$TPY -m pip --disable-pip-version-check wheel -q --no-deps -w '$OUT' pypcre==0.6.4"
    else
        echo "  skipped: no Python $PYV here to build pypcre (a C extension gptqmodel imports) for the target;"
        echo "  install one (e.g. pyenv install $PYV) or pass --python-version for the target's Python."
        echo "  The check then records GPTQ as 'gptqmodel does not import' and runs the rest."
    fi
fi

if [ "$PRINT_ONLY" = 0 ]; then
    echo "== $OUT"
    ls -l "$OUT"/*.whl | awk '{printf "  %8.1f MiB  %s\n", $5 / 1048576, $NF}'
    total=$(du -cb "$OUT"/*.whl | tail -1 | cut -f1)
    echo "  total $(awk "BEGIN {printf \"%.1f\", $total / 1048576}") MiB"
    if [ "$total" -gt $((60 * 1048576)) ]; then
        echo "  warning: over 60 MiB; the device tool carries at most 64 MiB with the working tree (--cuda, --no-gptq)"
    fi
fi

cat <<EOF

On the GPU machine, from the repository root (with '$OUT' copied beside it):
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $OUT/*.whl && export PYTHONPATH=/tmp/site && python3 bench/gpu_check.py$QUICK --out \${OUT:-bench/gpu}
(with this workplace's device tool: run(command=<that line>, carry=["$OUT"], timeout_s=600); results come back from \$OUT)
EOF
