"""per_row's Triton kernels on this CPU, through Triton's interpreter (``conftest.py`` asks for
it): the same code the GPU compiles (``tests/device`` runs it on CUDA in bf16), here in float32
and float16; whole models through ``per_row(kernel="triton")`` are in ``test_composition.py``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import peft_core as pc
from peft_core.lora_triton import Segments, shrink_expand
from tests.peft_core.test_composition import with_adapters


def reference(x, y, a, b, slots, *, column=0):
    """Each row's update in float64, row by row."""
    out = y.double().clone()
    for row, slot in enumerate(slots):
        update = x[row].double() @ a[slot].double() @ b[slot].double()
        out[row, :, column : column + b.shape[2]] += update
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_kernels_add_each_rows_own_update_and_leave_other_rows_alone(dtype):
    """Ranks below the tile (5 of 16), widths off the tiles (70 in, 100 out of 120 columns),
    rows in no adapter order, a row without adapter, a segment longer than one tile."""
    torch.manual_seed(0)
    slots = [2, 0, 1, 2, 3, 2]
    a, b = torch.randn(4, 70, 5), torch.randn(4, 5, 100)
    a[0], b[0] = 0, 0
    x = torch.randn(len(slots), 30, 70).to(dtype)
    y = torch.randn(len(slots), 30, 120).to(dtype)
    where = Segments.of(slots, 30, torch.device("cpu"))
    assert where.longest == 90 and where.length.tolist() == [30, 90, 30]  # slot 2: 3 rows
    with torch.no_grad():
        out = shrink_expand(x, y.clone(), a, b, where, column=10)
    expected = reference(x, y, a, b, slots, column=10)
    # float32 products and intermediate: only the output's own rounding is left
    bound = 1e-4 if dtype == torch.float32 else float(expected.abs().max()) * 2**-10
    assert float((out.double() - expected).abs().max()) <= bound
    assert torch.equal(out[1], y[1])  # slot 0: not written
    assert torch.equal(out[..., :10], y[..., :10]) and torch.equal(out[..., 110:], y[..., 110:])


def test_with_autograd_on_the_input_is_left_unchanged():
    slots = [1, 1]
    a, b = torch.randn(2, 8, 4), torch.randn(2, 4, 8)
    x, y = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    before = y.clone()
    out = shrink_expand(x, y, a, b, Segments.of(slots, 3, torch.device("cpu")))
    assert torch.equal(y, before) and not torch.equal(out, before)


def test_on_a_cpu_without_the_interpreter_it_names_the_kernels_that_run_there(
    tiny_model, monkeypatch
):
    model = with_adapters(tiny_model("llama", "causal-lm"), {"a": pc.LoRA(), "b": pc.LoRA()})
    monkeypatch.delenv("TRITON_INTERPRET")
    with (
        pytest.raises(pc.ConfigError, match="'triton' runs on CUDA GPUs and this model is on cpu"),
        pc.per_row(model, ["a", "b"], kernel="triton"),
    ):
        pass
    assert all(layer.routing is None for _, layer in pc.state.adapter_layers(model))


COMPILE_FOR_GPUS = textwrap.dedent(
    """
    import sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from peft_core.lora_triton import _expand, _shrink

    def types(kernel, activations):
        named = {"x": activations, "y": activations, "low_rank": "*fp32", "a": "*fp32",
                 "b": "*fp32", "token_ids": "*i32", "start": "*i32", "length": "*i32",
                 "slot": "*i32"}
        return {n: "constexpr" if n.isupper() else named.get(n, "i32") for n in kernel.arg_names}

    blocks = {_shrink: {"BLOCK_M": 64, "BLOCK_K": 64, "BLOCK_R": 16, "PRECISION": "tf32"},
              _expand: {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_R": 32, "PRECISION": "tf32"}}
    for capability in (80, 90):
        for activations in ("*bf16", "*fp16"):
            for kernel, constants in blocks.items():
                source = ASTSource(kernel, types(kernel, activations), constexprs=constants)
                compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32))
                assert compiled.asm["cubin"], (kernel, capability)
    print("compiled")
    """
)


def test_the_kernels_compile_for_ampere_and_hopper_gpus_without_one(tmp_path):
    """Triton lowers them to machine code for sm_80 and sm_90 here, with no GPU: a kernel that
    breaks a rule of the compiled path (tile shapes, dtypes of ``tl.dot``) fails in CI, not on
    the first GPU the project is lent."""
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment |= {"TRITON_CACHE_DIR": str(tmp_path), "TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run(
        [sys.executable, "-c", COMPILE_FOR_GPUS], env=environment, capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "compiled", result.stderr[-3000:]
