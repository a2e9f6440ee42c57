#!/usr/bin/env bash
# Checks what is generated from kernels/*.cu: the Rust launch table
# (src/backend/cuda/kernels.rs, plain Python, checked first so a stale table fails without
# any download) and the committed PTX must be what scripts/build-kernels.py makes of the
# sources now (the PTX with the pinned NVRTC), and ptxas must accept the PTX for sm_80 and
# sm_90.
# Needs only python3 and access to PyPI: the pinned NVRTC, CUDA headers and ptxas are
# installed from PyPI wheels into a virtual environment at
# ${SUBSPEC_NVRTC_VENV:-$HOME/.cache/subspec/nvrtc-venv} (once; later runs reuse it).
# The sm_90 resource usage (`ptxas -v`) goes to ${SUBSPEC_PTXAS_LOG:-target/ptxas-sm_90.log}
# and is summarised per kernel (registers, spills).
#
#   bash scripts/check-kernels.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SUBSPEC_NVRTC_VENV:-$HOME/.cache/subspec/nvrtc-venv}"
PYTHON="${PYTHON:-python3}"
LOG="${SUBSPEC_PTXAS_LOG:-$ROOT/target/ptxas-sm_90.log}"
PINS=(
    "nvidia-cuda-nvrtc-cu12==12.4.127"
    "nvidia-cuda-runtime-cu12==12.4.127"
    "nvidia-cuda-nvcc-cu12==12.4.131"
)

die() {
    echo "check-kernels: $*" >&2
    exit 1
}

VPY="$VENV/bin/python"

# --- the Rust table is what the sources give (no NVRTC needed) ------------------------------
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
"$PYTHON" "$ROOT/scripts/build-kernels.py" --check-rust ||
    die "the Rust kernel table is stale: run python3 scripts/build-kernels.py"

pins_installed() {
    [ -x "$VPY" ] || return 1
    "$VPY" - "${PINS[@]}" <<'EOF'
import importlib.metadata as md, sys
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    try:
        if md.version(name) != version:
            sys.exit(1)
    except md.PackageNotFoundError:
        sys.exit(1)
EOF
}

# Installs the pinned wheels straight from PyPI (for a Python without pip/ensurepip, as
# Debian's python3 without python3-venv): downloads each wheel, checks its sha256 against
# PyPI's metadata and unpacks it into the environment's site-packages.
install_wheels_without_pip() {
    "$VPY" - "${PINS[@]}" <<'EOF'
import hashlib, io, json, os, platform, sys, sysconfig, urllib.request, zipfile
site = sysconfig.get_paths()["purelib"]
arch = {"x86_64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}[platform.machine()]
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    # The simple repository API in its JSON form (PEP 691), as pip reads it.
    req = urllib.request.Request(f"https://pypi.org/simple/{name}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req) as r:
        meta = json.load(r)
    want = f"{name.replace('-', '_')}-{version}-py3-none-manylinux2014_{arch}.whl"
    files = [f for f in meta["files"] if f["filename"] == want]
    if not files:
        sys.exit(f"{want} not found on PyPI")
    f = files[0]
    with urllib.request.urlopen(f["url"]) as r:
        data = r.read()
    if hashlib.sha256(data).hexdigest() != f["hashes"]["sha256"]:
        sys.exit(f"{f['filename']}: sha256 mismatch")
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            path = z.extract(info, site)
            mode = info.external_attr >> 16
            if mode & 0o111:
                os.chmod(path, 0o755)
EOF
}

# --- the environment ----------------------------------------------------------------------
if ! pins_installed; then
    echo "check-kernels: installing the pinned NVRTC and ptxas into $VENV" >&2
    mkdir -p "$(dirname "$VENV")"
    if [ ! -x "$VPY" ]; then
        if ! "$PYTHON" -m venv "$VENV" >/dev/null 2>&1; then
            rm -rf "$VENV"
            "$PYTHON" -m venv --without-pip "$VENV" ||
                die "cannot create a virtual environment at $VENV (install python3-venv)"
        fi
    fi
    if "$VPY" -m pip --version >/dev/null 2>&1; then
        "$VPY" -m pip install -q --disable-pip-version-check --no-deps "${PINS[@]}" ||
            die "pip install of ${PINS[*]} into $VENV failed"
    else
        install_wheels_without_pip || die "installing ${PINS[*]} into $VENV failed"
    fi
    pins_installed || die "$VENV does not have ${PINS[*]} after installing them"
fi

PTXAS="$("$VPY" -c 'import sys, pathlib
for p in sys.path:
    f = pathlib.Path(p or ".") / "nvidia/cuda_nvcc/bin/ptxas"
    if f.is_file():
        print(f); break')"
[ -n "$PTXAS" ] || die "ptxas not found in $VENV"
[ -x "$PTXAS" ] || chmod +x "$PTXAS"

# --- the Rust table and the PTX are what the sources give ----------------------------------
"$VPY" "$ROOT/scripts/build-kernels.py" --check || die "generated files are stale (see above)"

# --- ptxas accepts it -----------------------------------------------------------------------
shopt -s nullglob
ptx_files=("$ROOT"/kernels/*.ptx)
[ ${#ptx_files[@]} -gt 0 ] || die "no kernels/*.ptx"
mkdir -p "$(dirname "$LOG")"
: >"$LOG"
for f in "${ptx_files[@]}"; do
    rel="${f#"$ROOT"/}"
    "$PTXAS" -arch=sm_80 -o /dev/null "$f" || die "ptxas -arch=sm_80 rejects $rel"
    echo "== $rel" >>"$LOG"
    "$PTXAS" -arch=sm_90 -v -o /dev/null "$f" >>"$LOG" 2>&1 ||
        { cat "$LOG" >&2; die "ptxas -arch=sm_90 rejects $rel"; }
done

# One line per kernel: registers and spills at sm_90.
summary="$(awk '
    /Compiling entry function/ { match($0, /'"'"'[^'"'"']*'"'"'/); k = substr($0, RSTART + 1, RLENGTH - 2); n++ }
    /Function properties for/ { k = $NF }
    /bytes spill stores/ { st[k] = $5; ld[k] = $9 }
    /Used [0-9]+ registers/ { for (i = 1; i <= NF; i++) if ($i == "Used") r[k] = $(i + 1) }
    END {
        for (k in r) {
            if (r[k] > maxr) maxr = r[k]
            s = (st[k] + 0 > 0 || ld[k] + 0 > 0) ? sprintf("  SPILLS %s B stores, %s B loads", st[k], ld[k]) : ""
            if (s != "") spills++
            printf "  %-40s %3d registers%s\n", k, r[k], s
        }
        printf "#%d %d %d\n", n, maxr, spills
    }' "$LOG")"
n_kernels="$(echo "$summary" | sed -n 's/^#\([0-9]*\) .*/\1/p')"
max_regs="$(echo "$summary" | sed -n 's/^#[0-9]* \([0-9]*\) .*/\1/p')"
n_spills="$(echo "$summary" | sed -n 's/^#[0-9]* [0-9]* \([0-9]*\)$/\1/p')"
echo "sm_90 resource usage (full log: $LOG):"
echo "$summary" | grep -v '^#' | sort
echo "  max registers: ${max_regs:-0}; kernels with spills: ${n_spills:-0}"
echo "kernels: Rust table fresh, PTX fresh, ptxas clean for sm_80 and sm_90 (${n_kernels:-0} kernels)"
