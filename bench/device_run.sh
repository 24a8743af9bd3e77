#!/usr/bin/env bash
# The GPU benchmarks at their real shapes, in one call on a lent GPU machine (the session's
# `device` tool; see /work/.library/device/README.md). Prepare once here, in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 -d .whl \
#       torchao==0.18.0 bitsandbytes==0.50.2
# then run it with carry [".whl"] (about 47 MB of wheels):
#   bash bench/device_run.sh                  all three (results land in $OUT)
#   bash bench/device_run.sh gpu packing      only these (one device command may run 10 minutes:
#   bash bench/device_run.sh multi_lora       split the work if all three do not fit)
# Without torchao our QLoRA rows are skipped, without bitsandbytes peft's. The device machine
# has torch, transformers and peft but no registry stack: these benchmarks need none of it.
set -euo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export ADAPTEROPS_BENCH_RESULTS="${OUT:-bench/results}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv
for name in "${@:-gpu packing multi_lora}"; do
    for bench in $name; do  # "gpu packing" as one word when no arguments were given
        echo "== $bench ($(date +%T))"
        python3 -m "bench.${bench}_bench" 2>&1 | tee "$ADAPTEROPS_BENCH_RESULTS/$bench.log" ||
            echo "== $bench failed; the others still run"
    done
done
