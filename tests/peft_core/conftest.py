"""Triton's interpreter for this folder's tests: per_row's Triton kernels (written for CUDA) run
on CPU tensors, in float32 and float16. Set before ``peft_core.lora_triton`` is first imported:
``triton.jit`` reads it when the kernels are made."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"
