#!/usr/bin/env bash
# benchmarks/gpu_check.sh DIR_WITH_WHEELS
#
# One GPU run, under 6 minutes, from the repository root: installs diffusers 0.42.1 (+ its wheel deps)
# from DIR_WITH_WHEELS into /tmp/site, checks the fast paths' accuracy (the gpu-marked tests of
# tests/test_fast.py and tests/test_engines.py), times every case with `python -m benchmarks --device cuda`, and writes
# RESULTS.md, results.json and logs into $OUT (or benchmarks/out), plus benchmarks/RESULTS.md.
#
# Options through the environment:
#   BENCH_ARGS       extra arguments for `python -m benchmarks`, e.g. "--compile none" or "--cases sampling"
#   BENCH_BUDGET_S   seconds after which no further compiled variant starts (default 300, counted from here)
#   PYTHON           the interpreter (default python3)
set -uo pipefail

DIR=${1:?usage: benchmarks/gpu_check.sh DIR_WITH_WHEELS   (diffusers-0.42.1 and its wheel dependencies)}
OUTDIR=${OUT:-benchmarks/out}
PY=${PYTHON:-python3}
START=$(date +%s)
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1

# 1. diffusers from the wheels (no index: the machine has no network); this repository on the path
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$DIR"/*.whl \
    || { echo "gpu_check: installing the wheels in $DIR failed"; exit 1; }
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

# 2. the machine and what imports (a missing module is named here, before any timing)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$OUTDIR/gpu.txt"
"$PY" - <<'EOF' 2>&1 | tee -a "$OUTDIR/gpu.txt"
import importlib

import torch

name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA DEVICE VISIBLE"
print("torch", torch.__version__, "CUDA", torch.version.cuda, "device", name)
for name in ("diffusers", "minidiff", "minidiff.fast", "benchmarks.cases", "benchmarks.cases_loops",
             "benchmarks.cases_samplers", "benchmarks.cases_sd", "pytest"):
    try:
        module = importlib.import_module(name)
        print("import ok:", name, getattr(module, "__version__", ""))
    except Exception as err:  # report every failure, not only the first
        print("IMPORT FAILED:", name, type(err).__name__, err)
EOF

# 3. accuracy on the GPU: graph replay = eager loop, bf16 error bounded (test_fast.py), the graphed fast
#    training engine = the plain engine, bf16 learns (test_engines.py);
#    CUDA pipeline with a CPU generator, sync-free device-timestep scheduler loop; Stable Diffusion's UNet in
#    fp16 against diffusers' (test_stable_diffusion.py). Files named one by one:
#    a module that cannot be collected (e.g. needs `datasets`, absent there) would stop the whole session.
timeout -k 10 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider \
    tests/test_fast.py tests/test_engines.py tests/test_pipeline.py tests/test_scheduling_ddpm.py \
    tests/test_stable_diffusion.py >"$OUTDIR/gpu_tests.txt" 2>&1
echo "gpu_check: gpu tests exit status $? (full log: $OUTDIR/gpu_tests.txt)"
tail -30 "$OUTDIR/gpu_tests.txt"

# 4. every case, uncompiled first (sd_unet_forward: an SD-1.5-shaped UNet2DConditionModel in fp16, diffusers'
#    and minidiff's alternating, batch 2, 4x64x64 latents, 77 tokens; its rel err beside its time), then the compiled variants at batch 64 while BENCH_BUDGET_S lasts (about
#    one compile fits by default; pick with BENCH_ARGS="--compile sample" etc.). The harness rewrites
#    RESULTS.md + JSON after each case, so a cut-short run keeps its rows; a failing case leaves a FAILED row.
ELAPSED=$(( $(date +%s) - START ))
BUDGET=$(( ${BENCH_BUDGET_S:-300} - ELAPSED ))
LIMIT=$(( 350 - ELAPSED ))
[ "$LIMIT" -ge 60 ] || LIMIT=60  # `timeout 0` would mean no limit at all
echo "gpu_check: ${ELAPSED} s spent before timing; compile budget ${BUDGET} s, hard limit ${LIMIT} s"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of words
timeout -k 10 "$LIMIT" "$PY" -m benchmarks --device cuda --json "$OUTDIR/results.json" --results-md "$OUTDIR/RESULTS.md" \
    --budget-s "$BUDGET" ${BENCH_ARGS:-} 2>&1 | tee "$OUTDIR/bench.log"
STATUS=${PIPESTATUS[0]}
[ -f "$OUTDIR/RESULTS.md" ] && cp "$OUTDIR/RESULTS.md" benchmarks/RESULTS.md
echo "gpu_check: benchmark exit status $STATUS after $(( $(date +%s) - START )) s; outputs in $OUTDIR"
exit "$STATUS"
