#!/usr/bin/env bash
# The GPU benchmarks at their real shapes, in one call on a lent GPU machine (the session's
# `device` tool; see /work/.library/device/README.md). Prepare once here, in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 -d .whl \
#       torchao==0.18.0 bitsandbytes==0.50.2
# then run it with carry [".whl"] (about 47 MB of wheels) and timeout_s 600:
#   bash bench/device_run.sh                    all three, each within its time limit
#   bash bench/device_run.sh gpu:400 packing    only these; NAME:SECONDS sets a limit
# tests/device runs first (60 s at most). Each benchmark stops at its limit (defaults below:
# 520 s in all, so one device command of at most 600 s holds everything) and keeps the rows
# it measured: gpu_bench and multi_lora_bench write their results after every row
# ("complete": false until the end). Without torchao our QLoRA rows are skipped, without
# bitsandbytes peft's. The device machine has torch, transformers and
# peft but no registry stack: these benchmarks need none of it.
set -euo pipefail
declare -A LIMIT=([gpu]=230 [packing]=60 [multi_lora]=230)
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export ADAPTEROPS_BENCH_RESULTS="${OUT:-bench/results}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv || echo "no nvidia-smi here"
# First the correctness of peft_core's device paths (tests/device, about a minute at most),
# without the repository's conftest (it starts servers this machine has no packages for).
echo "== tests/device ($(date +%T))"
timeout 60 python3 -m pytest tests/device -q -p no:cacheprovider -p no:warnings \
    --confcutdir=tests/device --junitxml="$ADAPTEROPS_BENCH_RESULTS/device-tests.xml" 2>&1 |
    tee "$ADAPTEROPS_BENCH_RESULTS/device-tests.log" || echo "== tests/device failed; see above"
for item in "${@:-gpu packing multi_lora}"; do
    for entry in $item; do  # "gpu packing multi_lora" is one word when no arguments were given
        bench="${entry%%:*}"
        seconds="${entry#*:}"
        [[ "$entry" == *:* ]] || seconds="${LIMIT[$bench]:-300}"
        echo "== $bench, at most ${seconds} s ($(date +%T))"
        timeout --signal=TERM --kill-after=10 "$seconds" python3 -m "bench.${bench}_bench" 2>&1 |
            tee "$ADAPTEROPS_BENCH_RESULTS/$bench.log" ||
            echo "== $bench failed or ran out of time; the others still run"
    done
done
