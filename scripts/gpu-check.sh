#!/usr/bin/env bash
# The CUDA checks, in one run on a GPU machine (no Rust toolchain, no network there).
#
#   here (x86-64, with cargo):   bash scripts/gpu-check.sh --build     # fills .gpu/ (< 64 MiB)
#   on the GPU machine:          bash scripts/gpu-check.sh RESULTS_DIR
#
# On the GPU machine it runs the parity tests (tests/cuda.rs: CUDA against the CPU on
# random-weight models shaped like the test models; speculative equals plain; streamed
# equals resident), then `subspec passes` on those shapes and on a synthetic Qwen2.5-7B
# (bf16, random weights written there) under an 8 GiB budget: ms per plain offloaded token,
# per verification of a 289-token tree, per draft step at width 6, the measured
# host-to-device bandwidth and the tokens/s projected with tau measured on the CPU. Full
# logs and JSON go to RESULTS_DIR; a short table is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--build" ]; then
    set -e
    cargo build --release --bin subspec
    rm -rf .gpu && mkdir -p .gpu
    cp target/release/subspec .gpu/subspec
    for t in cuda batch_invariance; do
        exe=$(cargo test --release --test $t --no-run --message-format=json 2>/dev/null |
            python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' $t)
        cp "$exe" .gpu/$t-tests
    done
    strip .gpu/*
    du -sh .gpu
    exit 0
fi

OUTDIR=${1:?usage: gpu-check.sh RESULTS_DIR (or --build)}
mkdir -p "$OUTDIR"
BIN=.gpu
SYNTH=${SUBSPEC_SYNTH_DIR:-/tmp/subspec-synth}
mkdir -p "$SYNTH"
export SUBSPEC_SYNTH_DIR=$SYNTH
# The test binaries were built elsewhere: the fixtures (tests/golden/arch) are here.
export SUBSPEC_REPO_ROOT=$PWD
# tau measured on the CPU with the real models (docs/BENCHMARKS.md): Qwen2.5-Coder-0.5B
# offloaded at 720 MiB, width 2 x depth 16; and the resident default chain (depth 8).
TAU=${SUBSPEC_TAU:-qwen0.5b-offloaded-cpu=11.9,qwen0.5b-chain8-cpu=6.8}

log() { echo "== $*" | tee -a "$OUTDIR/summary.log"; }

log "$(date -u +%FT%TZ) gpu-check on $(hostname)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee -a "$OUTDIR/summary.log"

# cuBLAS is optional (our kernels do the products); make it loadable for the comparison.
LIBS=/tmp/subspec-libs
mkdir -p "$LIBS"
cublas=$(ls /usr/local/cuda*/lib64/libcublas.so* /usr/lib/x86_64-linux-gnu/libcublas.so* \
    $(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)/nvidia/cu*/lib/libcublas.so* \
    $(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)/nvidia/cublas/lib/libcublas.so* 2>/dev/null | head -1)
if [ -n "$cublas" ]; then
    ln -sf "$cublas" "$LIBS/libcublas.so"
    export LD_LIBRARY_PATH="$LIBS:$(dirname "$cublas"):${LD_LIBRARY_PATH:-}"
    log "cuBLAS: $cublas"
else
    log "cuBLAS: not found (the cublas comparison is skipped)"
fi

status=0
t0=$(date +%s)
log "parity tests (tests/cuda.rs)"
RUST_BACKTRACE=1 timeout "${SUBSPEC_PARITY_S:-200}" "$BIN/cuda-tests" --test-threads=1 --nocapture 2>&1 | tee "$OUTDIR/parity.log"
parity=${PIPESTATUS[0]}
[ "$parity" = 0 ] || status=1
RUST_BACKTRACE=1 timeout 60 "$BIN/batch_invariance-tests" --nocapture on_cuda 2>&1 | tee -a "$OUTDIR/parity.log"
bi=${PIPESTATUS[0]}
[ "$bi" = 0 ] || { status=1; parity="$parity, batch invariance $bi"; }
log "parity tests: exit $parity in $(( $(date +%s) - t0 ))s"
if [ -n "$cublas" ]; then
    SUBSPEC_CUDA_GEMM=cublas timeout 60 "$BIN/cuda-tests" --test-threads=1 --nocapture every_operation 2>&1 |
        tee "$OUTDIR/parity-cublas.log" | grep -E "rel err|test result" || true
fi

passes() { # name, json file, args...
    local name=$1 file=$2
    shift 2
    local t=$(date +%s)
    timeout "$(( $(left) > 20 ? $(left) : 20 ))" "$BIN/subspec" passes --device cuda:0 --no-tokenizer --json "$@" >"$OUTDIR/$file" 2>"$OUTDIR/$file.err"
    local rc=$?
    log "passes $name: exit $rc in $(( $(date +%s) - t ))s $(tail -c 300 "$OUTDIR/$file.err" | tr '\n' ' ')"
    [ $rc = 0 ] || status=1
}

gemm=exact
[ -n "$cublas" ] && gemm=both
left() { echo $(( ${SUBSPEC_GPU_CHECK_S:-420} - ($(date +%s) - t0) )); }

# The paper's setting first: a Qwen2.5-7B shape at 8 GiB.
q7=$SYNTH/qwen2.5-7b-bf16
t=$(date +%s)
[ -f "$q7/model.safetensors" ] || "$BIN/subspec" synth --shape qwen2.5-7b --dtype bf16 --out "$q7" 2>&1 | tail -2
log "synth qwen2.5-7b bf16: $(( $(date +%s) - t ))s, $(du -sh "$q7" | cut -f1)"

# Where the device time of each pass goes, kernel by kernel (src/backend/cuda/profile.rs):
# SUBSPEC_GPU_PROFILE=1 adds these runs; =only runs the parity tests and these alone.
profile() { # name, args...
    local name=$1
    shift
    SUBSPEC_CUDA_PROFILE=1 timeout 120 "$BIN/subspec" passes --device cuda:0 --no-tokenizer --json \
        --gemm exact --reps 1 "$@" >"$OUTDIR/profile-$name.json" 2>"$OUTDIR/profile-$name.log"
    log "profile $name: exit $?"
    grep -A8 "^profile" "$OUTDIR/profile-$name.log" | tee -a "$OUTDIR/summary.log"
}
if [ -n "${SUBSPEC_GPU_PROFILE:-}" ]; then
    profile qwen2.5-7b-8gib --model "$q7" --ctx-len 2048 --max-tree-tokens 289 --budget 8GiB \
        --draft-method rtn --tree-tokens 289 --draft-width 6
    q05="$SYNTH/subspec-synth-qwen2.5-0.5b-f16"
    [ -f "$q05/model.safetensors" ] || "$BIN/subspec" synth --shape qwen2.5-0.5b --dtype f16 --out "$q05" >/dev/null
    profile qwen2.5-0.5b-resident --model "$q05" --ctx-len 2048 --max-tree-tokens 289 \
        --tree-tokens 289 --draft-width 6
    if [ "$SUBSPEC_GPU_PROFILE" = only ]; then
        log "done in $(( $(date +%s) - t0 ))s, status $status"
        exit $status
    fi
fi
# RTN substitutes: quantizing with HQQ costs load time only, not pass time.
passes "qwen2.5-7b 8GiB" "qwen2.5-7b-8gib.json" --model "$q7" --ctx-len 2048 --max-tree-tokens 289 \
    --budget 8GiB --draft-method rtn --tree-tokens 289 --draft-width 6 --gemm $gemm --tau "$TAU" --reps 5

for shape in smollm2-135m qwen2.5-0.5b; do
    [ "$(left)" -gt 40 ] || { log "skipping $shape passes: out of time"; continue; }
    dir="$SYNTH/subspec-synth-$shape-f16"
    [ -f "$dir/model.safetensors" ] || "$BIN/subspec" synth --shape "$shape" --dtype f16 --out "$dir"
    passes "$shape min budget" "$shape-min.json" --model "$dir" --ctx-len 2048 --max-tree-tokens 289 \
        --budget min --tree-tokens 289 --draft-width 6 --gemm $gemm --tau "$TAU"
    [ "$(left)" -gt 30 ] || continue
    passes "$shape resident" "$shape-resident.json" --model "$dir" --ctx-len 2048 --max-tree-tokens 289 \
        --tree-tokens 289 --draft-width 6 --gemm $gemm --tau "$TAU"
done

log "done in $(( $(date +%s) - t0 ))s, status $status"
python3 - "$OUTDIR" <<'EOF' | tee -a "$OUTDIR/summary.log"
import json, os, sys
d = sys.argv[1]
print(f"{'run':28} {'gemm':6} {'streamed':>9} {'H2D GB/s':>8} {'floor ms':>8} {'plain ms':>9} {'xfloor':>6} {'verify ms':>9} {'xplain':>6} {'draft ms':>8} {'ovl ms':>8} {'ovl steps':>9} {'proj tok/s':>10} {'speedup':>7}")
for f in sorted(os.listdir(d)):
    if not f.endswith('.json'):
        continue
    try:
        v = json.load(open(os.path.join(d, f)))
    except Exception as e:
        print(f"{f:28} unreadable: {e}")
        continue
    bw = v.get('slow_tier_bytes_per_s') or 0
    fl = v.get('floor_s') or 0
    for r in v['runs']:
        p = r['projections'][0] if r['projections'] else {}
        print(f"{f[:-5]:28} {r['gemm']:6} {v['offloaded_layers']:>3}/{v['layers']:<5} {bw/1e9:8.1f} {fl*1e3:8.2f} {r['plain_token_s']*1e3:9.2f} {(r['plain_over_floor'] or 0):6.2f} {r['verify_s']*1e3:9.2f} {r['verify_over_plain']:6.2f} {r['draft_step_s']*1e3:8.3f} {(r.get('overlapped_verify_s') or 0)*1e3:8.2f} {(r.get('overlapped_draft_steps') or 0):9.0f} {p.get('tokens_per_s', 0):10.1f} {p.get('speedup', 0):7.2f}")
print("parity: " + open(os.path.join(d, 'parity.log')).read().strip().splitlines()[-1] if os.path.exists(os.path.join(d, 'parity.log')) else "parity: no log")
EOF
exit $status
