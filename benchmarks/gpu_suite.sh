#!/usr/bin/env bash
# The GPU checks and training-throughput measurements, in order of importance, each under its own time
# limit so that one that hangs does not cost the rest: the stressed-input check of the LA kernels (bf16),
# the GPU tests of the training step and the kernels, the student training step at 4K-64K eager, the op
# alone at B=1 and 8, the same training step with compiled blocks, then the fast-decode GPU tests.
# Usage, from the project root: bash benchmarks/gpu_suite.sh OUT_DIR   (logs and Markdown tables in OUT_DIR)
set -u
out=${1:?usage: bash benchmarks/gpu_suite.sh OUT_DIR}
mkdir -p "$out"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
start=$(date +%s)
step() {  # step NAME SECONDS COMMAND...: run it, log to OUT/NAME.log, print its last lines
    local name=$1 limit=$2
    shift 2
    echo "== $name (at $(( $(date +%s) - start )) s)"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    echo "   exit $?"
    tail -3 "$out/$name.log"
}
step stress 150 python3 -u benchmarks/check_la_stress.py --markdown "$out/stress.md"
step gpu_step 200 python3 -u -m pytest -q -m gpu tests/modeling/test_gpu_step.py tests/ops/test_la_stress_gpu.py \
    tests/ops/test_la_backend.py -p no:cacheprovider
step train_eager 420 python3 -u benchmarks/bench_student_step.py --lengths 4096 16384 32768 65536 --batch auto \
    --max-batch 16 --profile-step 4096 --markdown "$out/train_eager.md"
step op 200 python3 -u benchmarks/bench_hybrid_attention.py --skip-checks --lengths 4096 65536 --plans 2 \
    --batch 1 8 --markdown "$out/op.md"
step train_compiled 420 python3 -u benchmarks/bench_student_step.py --lengths 4096 65536 --batch auto \
    --max-batch 16 --compile-blocks --profile-step 4096 --markdown "$out/train_compiled.md"
step decode_tests 300 python3 -u -m pytest -q -m gpu tests/modeling/test_fast_decode.py tests/modeling/test_padding.py \
    tests/eval -p no:cacheprovider
echo "== done in $(( $(date +%s) - start )) s"
