#!/usr/bin/env bash
# The GPU benchmarks at their real shapes, in one call on a lent GPU machine (the session's
# `device` tool; see /work/.library/device/README.md). Prepare once here, in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 -d .whl \
#       torchao==0.18.0 bitsandbytes==0.50.2
# then run it with carry [".whl"] (about 47 MB of wheels):
#   bash bench/device_run.sh      (about 9 minutes on an H200; results land in $OUT)
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
python3 -m bench.gpu_bench 2>&1 | tee "$ADAPTEROPS_BENCH_RESULTS/gpu.log"
python3 -m bench.multi_lora_bench 2>&1 | tee "$ADAPTEROPS_BENCH_RESULTS/multi_lora.log"
python3 -m bench.packing_bench 2>&1 | tee "$ADAPTEROPS_BENCH_RESULTS/packing.log"
