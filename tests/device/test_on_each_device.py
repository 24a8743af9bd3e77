"""peft_core's paths that an accelerator runs differently, on every device this machine has: the
CPU in CI, and CUDA as well when a GPU is lent (``bench/device_run.sh`` runs this file there
first, without the repository's conftest: that machine has torch, transformers and peft only).

On CUDA these exercise what a CPU cannot: cuBLAS in bf16/fp16, the grouped-GEMM kernel of
``per_row(kernel="segmented")``, the Triton kernels of ``kernel="triton"`` (and ``"auto"``'s
pick for a prefill) compiled for the GPU, torchao's NF4 on the GPU, SDPA's GPU kernels with
packed rows.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import transformers as T
from torch import Tensor, nn

import peft_core as pc
from tests.helpers import TINY_CONFIGS

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
# per_row's kernels on each device; Triton's on CUDA only (on a CPU, tests/peft_core runs its
# code through Triton's interpreter, in float32 and float16: the interpreter has no bfloat16)
ROUTES = [
    (device, kernel)
    for device in DEVICES
    for kernel in pc.routing.KERNELS
    if kernel != "triton" or device == "cuda"
]
ALL_LINEAR = ("q", "k", "v", "o", "ffn_in", "ffn_out")
ROUTED = {
    "lora": pc.LoRA(rank=2, targets=("q", "v")),
    "lora-wide": pc.LoRA(rank=5, targets=ALL_LINEAR),
    "dora": pc.DoRA(rank=4, targets=("q", "v")),
    "pfeiffer": pc.Pfeiffer(bottleneck=3),
    "houlsby": pc.Houlsby(bottleneck=7),
}


def llama(device: str, dtype: torch.dtype, **sizes: int) -> T.LlamaForCausalLM:
    torch.manual_seed(0)
    config = TINY_CONFIGS["llama"]()
    for key, value in sizes.items():
        setattr(config, key, value)
    return T.LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


def tokens(rows: int, length: int, device: str, *, seed: int = 1234) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 100, (rows, length), generator=generator).to(device)


@torch.no_grad()
def perturb(model: nn.Module, name: str, scale: float, *, seed: int = 99) -> None:
    """Non-trivial adapter weights (a fresh LoRA is a no-op), drawn on the CPU for every device."""
    generator = torch.Generator().manual_seed(seed)
    for tensor in pc.adapter_state_dict(model, name).values():
        if tensor.is_floating_point():
            noise = torch.randn(tensor.shape, generator=generator) * scale
            tensor.add_(noise.to(tensor.device, tensor.dtype))


def with_adapters(model: nn.Module, configs: dict[str, pc.MethodConfig]) -> nn.Module:
    for seed, (name, config) in enumerate(configs.items()):
        pc.add_adapter(model, name, config)
        perturb(model, name, scale=0.3, seed=seed)
    return model


def forward(model: nn.Module, ids: Tensor) -> Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def train_steps(model: nn.Module, ids: Tensor, steps: int = 30) -> list[float]:
    """AdamW on the trainable weights, one fixed batch; the loss before each step."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("device", DEVICES)
def test_float32_adapters_on_a_bf16_base_train_as_on_a_float32_base(device):
    """The LoRA's weights stay float32 on the bf16 base (peft's rule), so its loss curve follows
    the all-float32 run's; the base gets no gradient and keeps its dtype."""
    curves = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = llama(device, dtype)
        pc.add_adapter(model, "l", pc.LoRA(rank=8, targets=ALL_LINEAR))
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert {(p.dtype, p.device.type) for p in trainable} == {(torch.float32, device)}
        curves[dtype] = train_steps(model, tokens(4, 16, device))
        base = dict(pc.layer.base_named_parameters(model))
        assert all(p.grad is None and p.dtype == dtype for p in base.values())
    exact, half = curves[torch.float32], curves[torch.bfloat16]
    assert exact[-1] < exact[0] - 0.4, exact  # it learns (4.63 -> 4.05 on the CPU)
    assert max(abs(a - b) for a, b in zip(exact, half, strict=True)) < 0.03, (exact, half)


@pytest.mark.parametrize("device", DEVICES)
def test_an_fp16_base_trains_through_pc_train_with_loss_scaling(device):
    """GPUs without bf16 train on fp16 bases: autocast in fp16 and a GradScaler on the device."""
    model = llama(device, torch.float16)
    pc.add_adapter(model, "l", pc.LoRA(rank=8, targets=ALL_LINEAR))
    ids = tokens(4, 16, device)
    result = pc.train(model, [{"input_ids": ids, "labels": ids}], max_steps=30,
                      learning_rate=1e-2, warmup_ratio=0, precision="fp16")  # fmt: skip
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert result.losses[-1] < result.losses[0] - 0.4, result.losses


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_merge_then_unmerge_gives_back_every_bit(device, dtype):
    model = with_adapters(
        llama(device, dtype), {"lora": ROUTED["lora-wide"], "dora": ROUTED["dora"]}
    )
    before = {k: v.clone() for k, v in pc.layer.base_state_dict(model).items()}
    for name in ("lora", "dora"):
        pc.merge(model, name)
        assert any(
            not torch.equal(v, before[k]) for k, v in pc.layer.base_state_dict(model).items()
        )
        pc.unmerge(model, name)
    after = pc.layer.base_state_dict(model)
    assert [k for k in before if not torch.equal(after[k], before[k])] == []


@pytest.mark.parametrize(("device", "kernel"), ROUTES)
def test_each_row_of_a_mixed_batch_is_what_its_adapter_gives_alone(device, kernel):
    """float32: equal to 1e-4; bf16: no further from the float32 answer than one adapter run
    alone in bf16 is (``gather`` rounds as the plain path does, not worse). On a GPU
    ``segmented`` takes the adapters' float32 weights and their low-rank product in bf16 (the
    grouped-GEMM kernel's inputs and output), as a bf16 adapter would: on the H200 that was
    2.0x the plain path's error (0.0118 vs 0.0058), while a wrong row is off by whole units.
    ``triton`` (``auto``'s pick for this bf16 prefill on such a GPU) keeps both in float32
    (TF32 products in bf16, float32 ones in float32; TF32 put float32 rows 1.9e-4 off on the
    H200): held to gather's bound."""
    names = [*ROUTED, None, "lora-wide", "lora"]
    ids = tokens(len(names), 9, device)
    exact = with_adapters(llama(device, torch.float32), ROUTED)
    half = with_adapters(llama(device, torch.bfloat16), ROUTED)
    with pc.per_row(exact, names, kernel=kernel):
        routed = forward(exact, ids)
    with pc.per_row(half, names, kernel=kernel):
        routed_half = forward(half, ids)
    if kernel == "auto" and device == "cuda":  # an Ampere or later GPU with triton: its kernel
        probe = torch.empty(2, 9, 8, device=device, dtype=torch.bfloat16)
        ready = pc.routing.triton_runs_on(probe.device)
        assert pc.routing.auto_kernel(probe, triton_ready=ready) == "triton"
    for row, name in enumerate(names):
        pc.set_active(exact, name)
        pc.set_active(half, name)
        alone = forward(exact, ids[row : row + 1])
        torch.testing.assert_close(routed[row : row + 1], alone, atol=1e-4, rtol=1e-4)
        error_alone = (forward(half, ids[row : row + 1]) - alone).abs().max()
        error_routed = (routed_half[row : row + 1] - alone).abs().max()
        bound = 3.0 if kernel == "segmented" and device == "cuda" else 1.5
        assert error_routed <= bound * error_alone + 1e-3, (name, error_routed, error_alone)


@pytest.mark.parametrize(("device", "kernel"), ROUTES)
def test_generation_with_an_adapter_per_row_equals_each_row_alone(device, kernel):
    model = with_adapters(
        llama(device, torch.float32), {k: ROUTED[k] for k in ("lora", "lora-wide", "pfeiffer")}
    )
    rows = ["lora", "pfeiffer", None, "lora-wide"]
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16], [17, 18]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    options = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad(), pc.per_row(model, rows, kernel=kernel):
        together = model.generate(input_ids=ids, attention_mask=mask, **options)
    for row, (prompt, name) in enumerate(zip(prompts, rows, strict=True)):
        pc.set_active(model, name)
        with torch.no_grad():
            alone = model.generate(input_ids=torch.tensor([prompt], device=device), **options)
        assert together[row, width:].tolist() == alone[0, len(prompt) :].tolist(), name


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_checkpointing_keeps_every_lora_gradient(device):
    grads = {}
    for checkpointing in (False, True):
        model = with_adapters(llama(device, torch.float32), {"l": ROUTED["lora-wide"]})
        model.train()
        if checkpointing:
            options = {"use_reentrant": False}  # a frozen base: reentrant would drop LoRA grads
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.20
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
        ids = tokens(2, 12, device)
        model(input_ids=ids, labels=ids).loss.backward()
        grads[checkpointing] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads[True].keys() == grads[False].keys() and len(grads[False]) == 28
    for name, grad in grads[False].items():
        assert float(grad.abs().max()) > 0, name
        torch.testing.assert_close(grads[True][name], grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_packed_rows_give_the_loss_and_gradients_of_padded_ones(device):
    model = with_adapters(llama(device, torch.float32), {"l": ROUTED["lora-wide"]})
    lengths = [9, 5, 12]
    examples = [tokens(1, n, "cpu", seed=n)[0].tolist() for n in lengths]
    features = [{"input_ids": e, "labels": e} for e in examples]
    packed = T.DataCollatorWithFlattening(return_tensors="pt")(features)
    width = max(lengths)
    padded = {
        "input_ids": torch.tensor([e + [0] * (width - len(e)) for e in examples]),
        "attention_mask": torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in examples]),
        "labels": torch.tensor([e + [-100] * (width - len(e)) for e in examples]),
    }
    results = []
    for inputs in (padded, packed):
        model.zero_grad()
        loss = model(**{k: v.to(device) for k, v in inputs.items()}, use_cache=False).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    (padded_loss, padded_grads), (packed_loss, packed_grads) = results
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-5, rtol=0)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="QLoRA needs torchao")
@pytest.mark.parametrize("device", DEVICES)
def test_a_lora_trained_on_an_nf4_base_loads_onto_the_bf16_base(device, tmp_path):
    sizes = {"hidden_size": 128, "intermediate_size": 256, "num_key_value_heads": 4, "head_dim": 32}
    base = llama(device, torch.bfloat16, **sizes)  # NF4 blocks: 64 x 256 weights per layer
    model = copy.deepcopy(base)
    pc.quantize_base(model, "nf4")
    assert len(pc.quantize.quantized_layers(model)) == 2 * 7
    pc.add_adapter(model, "q", pc.LoRA(rank=8, targets=ALL_LINEAR))
    losses = train_steps(model, tokens(4, 16, device))
    assert losses[-1] < losses[0] - 0.4, losses
    pc.save_adapter(model, "q", tmp_path / "q")
    pc.load_adapter(base, tmp_path / "q")
    saved = pc.adapter_state_dict(model, "q")
    loaded = pc.adapter_state_dict(base, "q")
    assert saved.keys() == loaded.keys() and len(saved) == 28
    for key, tensor in saved.items():
        torch.testing.assert_close(loaded[key].float(), tensor.bfloat16().float(), atol=0, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_the_step_memory_estimate_is_what_the_device_holds(device):
    """``pc.estimate_step_memory`` (fake tensors) against two real ``pc.train`` steps in bf16:
    on CUDA what the caching allocator reports at the peak, on the CPU every tensor counted."""
    from peft_core.memory import LiveTensorBytes

    config = T.LlamaConfig(
        hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=2000, pad_token_id=0,
    )  # fmt: skip
    lora = pc.LoRA(rank=16, targets=ALL_LINEAR)
    estimate = pc.estimate_step_memory(
        config, lora, head="causal-lm", batch_size=4, sequence_length=256,
        dtype=torch.bfloat16, precision="bf16",
    )  # fmt: skip
    torch.manual_seed(0)
    model = T.LlamaForCausalLM._from_config(config, dtype=torch.bfloat16).to(device)
    pc.add_adapter(model, "l", lora)
    ids = tokens(4, 256, device)

    def two_steps() -> None:
        pc.train(model, [{"input_ids": ids, "labels": ids}], max_steps=2, learning_rate=1e-4,
                 precision="bf16")  # fmt: skip

    if device == "cuda":
        two_steps()  # cuBLAS workspaces and kernels: allocated once, before the count
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        two_steps()
        real = torch.cuda.max_memory_allocated() - held
    else:
        counter = LiveTensorBytes()
        with counter:
            two_steps()
        real = counter.peak
    assert 0.9 < estimate.step_bytes / real < 1.15, (estimate.step_bytes, real)


@pytest.mark.parametrize("device", DEVICES)
def test_adapters_on_a_base_partly_offloaded_run_on_the_execution_device(device, tmp_path):
    """Evaluation of a base bigger than the GPUs (``load.offload``): accelerate keeps the second
    block in CPU memory (on a CPU: on disk) and brings it to ``device`` for each forward. The
    adapters live on ``device`` and answer, per row too, as on the whole base."""
    llama(device, torch.bfloat16).save_pretrained(tmp_path / "base")
    whole = T.LlamaForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.bfloat16)
    whole = whole.to(device).eval()  # (loaded as the offloaded one is: the same bf16 rounding)
    kept = "cpu" if device == "cuda" else "disk"
    here = 0 if device == "cuda" else "cpu"
    device_map = {"model.embed_tokens": here, "model.layers.0": here, "model.layers.1": kept,
                  "model.norm": here, "model.rotary_emb": here, "lm_head": here}  # fmt: skip
    offloaded = T.LlamaForCausalLM.from_pretrained(
        tmp_path / "base", dtype=torch.bfloat16, device_map=device_map,
        offload_folder=tmp_path / "offload",
    ).eval()  # fmt: skip
    assert offloaded.model.layers[1].self_attn.q_proj.weight.is_meta
    configs = {"a": pc.LoRA(rank=4, targets=ALL_LINEAR), "b": pc.IA3()}
    trained = with_adapters(llama(device, torch.bfloat16), configs)
    for name in configs:  # the same saved (bf16) adapters into both
        folder = pc.save_adapter(trained, name, tmp_path / name)
        pc.load_adapter(offloaded, folder, name=name)
        pc.load_adapter(whole, folder, name=name)
    lora = offloaded.model.layers[1].self_attn.q_proj.adapters["a"]
    assert lora.lora_A.weight.device.type == device
    ids = tokens(2, 9, device)
    for name in configs:
        pc.set_active(whole, name)
        pc.set_active(offloaded, name)
        torch.testing.assert_close(forward(offloaded, ids), forward(whole, ids), atol=0, rtol=0)
    with torch.no_grad(), pc.per_row(offloaded, ["a", "b"]):
        routed = offloaded(input_ids=ids).logits.float()
    for row, name in enumerate(configs):
        pc.set_active(whole, name)
        torch.testing.assert_close(
            routed[row], forward(whole, ids[row : row + 1])[0], atol=2e-2, rtol=0
        )
