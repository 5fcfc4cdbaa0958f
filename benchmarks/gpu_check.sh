#!/usr/bin/env bash
# One call on a GPU machine: the GPU tests, the GPU benchmarks, a short table.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#   SCALING=1 bash benchmarks/gpu_check.sh  # with the scaling benchmark (2 more minutes)
#   OTHER=.device/before bash benchmarks/gpu_check.sh  # side by side with another version
#   LM=1 bash benchmarks/gpu_check.sh       # issue 23: GPT-2 of real width, 12 layers (needs
#                                           # transformers importable; 5 more minutes at most)
#
# Uses the machine's own python3 with torch (CUDA), scikit-learn and pytest;
# nothing is installed.  The paper's checkpoints are read from
# $SKLEARN_LIB_CHECKPOINTS (default: .device/lib-paper, a git-ignored copy).
# Full logs go to $OUT (default /tmp/gpu_check).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
export SKLEARN_LIB_CHECKPOINTS=${SKLEARN_LIB_CHECKPOINTS:-$PWD/.device/lib-paper}
PY=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}

nvidia-smi -L | tee "$OUT/summary.txt"
$PY -c "import torch, sklearn; print('torch', torch.__version__, 'sklearn', sklearn.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/summary.txt"
step gpu_tests 90 $PY -m pytest -q -p no:cacheprovider tests/integration/test_gpu.py tests/unit/routes/test_jacobian.py tests/unit/routes/forms/test_residual_mlp.py tests/unit/model/test_session.py tests/integration/test_model_untouched.py tests/integration/test_streaming.py
step bench_modadd 120 $PY benchmarks/bench_modular_addition.py --device cuda --repeat 3
step bench_mlp 90 $PY benchmarks/bench_mlp_vs_pca.py --device cuda --n 20000 --generic
if [ -n "${SCALING:-}" ]; then
    step bench_scaling 120 $PY benchmarks/bench_scaling.py --device cuda --n-sizes 20000,40000,80000,160000,320000 --d-sizes 128,256,512,1024,2048 --n-fixed 20000
fi
# An optional side-by-side comparison with another version of the package:
# OTHER=path/to/other/checkout (see benchmarks/bench_versions.py).
if [ -n "${OTHER:-}" ]; then
    step versions 150 $PY benchmarks/bench_versions.py --other "$OTHER" --device cuda --repeat 3
fi
step bench_user_transformer 120 $PY benchmarks/bench_user_transformer.py --device cuda --repeat 3
if [ -n "${LM:-}" ]; then
    if $PY -c "import transformers" 2>/dev/null; then
        # Issue 23's goal: "auto" at top-5 agreement 0.99 under 3 minutes and 16 GB.
        step bench_real_width 300 $PY benchmarks/bench_real_width.py --layers 12 --n 64 --device cuda --no-reference
    else
        echo "bench_real_width: skipped, transformers is not importable" | tee -a "$OUT/summary.txt"
    fi
fi
step all_tests_on_gpu 180 $PY -m pytest -q -p no:cacheprovider -m "not slow" tests

echo
echo "======== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader))"
cat "$OUT/summary.txt"
tail -n 3 "$OUT/gpu_tests.txt" "$OUT/all_tests_on_gpu.txt"
tail -n 8 "$OUT/bench_modadd.txt"
tail -n 4 "$OUT/bench_mlp.txt"
tail -n 6 "$OUT/bench_user_transformer.txt"
for extra in bench_scaling:16 versions:7 bench_real_width:8; do
    if [ -f "$OUT/${extra%%:*}.txt" ]; then tail -n "${extra##*:}" "$OUT/${extra%%:*}.txt"; fi
done
