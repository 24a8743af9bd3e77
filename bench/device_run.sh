#!/usr/bin/env bash
# What only a GPU can show, on a lent GPU machine (the session's `device` tool; see
# /work/.library/device/README.md). The 15 minutes of device time include the machine's start,
# so the calls go in order of what the open issues need (#14: the H200 runs of 2026-11-30 and
# 2026-12-04 measured every q,v row and the all-linear rows up to 32 adapters, Triton on the
# all-linear ones; left are `auto`'s own timing, 64 all-linear adapters and Triton on q,v):
#   1. ARGS_multi_lora='--targets "all linear" --targets q,v --counts 32,64 --prefill-only' \
#          bash bench/device_run.sh tests multi_lora:400
#      carry [".whl-train"], timeout_s 520      (the rows join those already in
#                                               bench/results/multi_lora.json, keeping their
#                                               decode numbers; tests/device compiles per_row's
#                                               Triton kernel first and checks auto picks it;
#                                               each row times it as ours_triton, auto as
#                                               ours_auto)
#   1b. if time is left: ARGS_multi_lora='--targets "all linear" --counts 4,32' \
#          bash bench/device_run.sh multi_lora:300   (auto's decoding, beside gather's)
#   2. with the time left (`status`, 4 minutes to start a machine): bash bench/device_run.sh gpu
#      carry [".whl"]                           (gpu_bench again, after changes to training)
#   3. bash bench/device_run.sh lora_init      (PiSSA/OLoRA starts on 7B-shaped layers, ~2 min)
#   4. bash bench/device_run.sh offload        (load.offload on a GPU: 8 7B-shaped blocks, half
#                                               in CPU memory or on disk, against all on the GPU)
# With no names it runs tests, gpu and multi_lora.
# Prepare the wheels once here, in the repo root (the machine has torch, transformers, peft,
# pytest, typer, rich, pandas, but none of these):
#   echo /.whl/ >> .git/info/exclude; echo /.whl-train/ >> .git/info/exclude
#   get() { python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$@"; }
#   get .whl torchao==0.18.0 bitsandbytes==0.50.2                              # ~47 MB
#   get .whl-train torchao==0.18.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types \
#       typing-inspection datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 python-dotenv \
#       pyarrow==25.0.1                                                        # ~58 MB
# NAME:SECONDS sets a benchmark's time limit (defaults below); ARGS_NAME its options. Each stops at its limit and keeps
# the rows it measured: gpu_bench and multi_lora_bench write their results after every row
# ("complete": false until the end). Without torchao our QLoRA rows are skipped, without
# bitsandbytes peft's. Results and logs land in $OUT.
set -euo pipefail
declare -A LIMIT=([gpu]=200 [multi_lora]=200 [packing]=60 [llm_train]=200 [quantized_load]=80
    [lora_init]=150 [offload]=120)
for folder in .whl .whl-train; do
    if ls "$folder"/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$folder"/*.whl
        export PYTHONPATH=/tmp/site
    fi
done
export ADAPTEROPS_BENCH_RESULTS="${OUT:-bench/results}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv || echo "no nvidia-smi here"
[[ $# -gt 0 ]] || set -- tests gpu multi_lora
for entry in "$@"; do
    if [[ "$entry" == tests ]]; then
        # peft_core's device paths (a minute at most), without the repository's conftest (it
        # starts servers this machine has no packages for).
        echo "== tests/device ($(date +%T))"
        timeout 60 python3 -m pytest tests/device -q -p no:cacheprovider -p no:warnings \
            --confcutdir=tests/device --junitxml="$ADAPTEROPS_BENCH_RESULTS/device-tests.xml" \
            2>&1 | tee "$ADAPTEROPS_BENCH_RESULTS/device-tests.log" ||
            echo "== tests/device failed; see above"
        continue
    fi
    bench="${entry%%:*}"
    seconds="${entry#*:}"
    [[ "$entry" == *:* ]] || seconds="${LIMIT[$bench]:-300}"
    module="bench.${bench}_bench"
    [[ "$bench" == llm_train ]] && module=bench.llm_train_check
    options="ARGS_$bench"
    eval "extra=(${!options:-})"  # e.g. ARGS_multi_lora='--targets "all linear" --counts 1,32'
    echo "== $bench ${extra[*]}, at most ${seconds} s ($(date +%T))"
    timeout --signal=TERM --kill-after=10 "$seconds" python3 -m "$module" "${extra[@]}" 2>&1 |
        tee "$ADAPTEROPS_BENCH_RESULTS/$bench.log" ||
        echo "== $bench failed or ran out of time; the others still run"
done
