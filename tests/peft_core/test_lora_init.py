"""LoRA started from the weights (``LoRA(init="pissa" | "olora")``): the start and the gradients
are peft's, the frozen base is never touched, the start half stays put through training, and the
files are the plain LoRA of rank 2r that peft's own conversion writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import peft_core as pc
from peft_core.layer import base_state_dict
from peft_core.methods.lora import LoRAModule, _start
from peft_core.quantize import dequantized
from tests.helpers import TINY_CONFIGS, batch, logits

INITS = ["pissa", "olora"]
PEFT_TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj"]}


def lora(init: str, **fields: object) -> pc.LoRA:
    return pc.LoRA(rank=4, alpha=8, targets=("q", "v"), init=init, **fields)  # type: ignore[arg-type]


def module_at(model: torch.nn.Module, suffix: str, name: str = "a") -> LoRAModule:
    found = [m for n, m in model.named_modules() if n.endswith(suffix) and hasattr(m, "adapters")]
    return found[0].adapters[name]


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])  # gpt2: slices of Conv1D c_attn
def test_a_fresh_start_changes_nothing_and_leaves_the_base_alone(tiny_model, family, init):
    model = tiny_model(family, "classification")
    inputs = batch(model)
    expected, base = (
        logits(model, inputs),
        {k: v.clone() for k, v in base_state_dict(model).items()},
    )
    pc.add_adapter(model, "a", lora(init))
    torch.testing.assert_close(logits(model, inputs), expected, atol=1e-5, rtol=0)
    assert all(torch.equal(v, base[k]) for k, v in base_state_dict(model).items())
    update = pc.merged_state_dict(model, "a")  # the start is in the adapter: it adds ~nothing
    assert all(torch.allclose(update[k], v, atol=1e-5) for k, v in base.items())


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_the_start_and_the_gradients_are_peft(tiny_model, family, init):
    torch.manual_seed(0)
    ours = tiny_model(family, "classification")
    torch.manual_seed(0)  # the same weights
    theirs = get_peft_model(
        tiny_model(family, "classification"),
        LoraConfig(r=4, lora_alpha=8, target_modules=PEFT_TARGETS[family], init_lora_weights=init),
    )
    pc.add_adapter(ours, "a", lora(init))
    inputs, labels = batch(ours), torch.tensor([0, 1, 0])
    for model in (ours, theirs):
        model.train()(**inputs, labels=labels).loss.backward()
    suffix = (
        f"layers.0.self_attn.{PEFT_TARGETS[family][0]}"
        if family == "llama"
        else "0.attention.self.query"
    )
    mine = module_at(ours, suffix)
    peft_layer = next(
        m for n, m in theirs.named_modules() if n.endswith(suffix) and hasattr(m, "lora_A")
    )
    peft_a, peft_b = peft_layer.lora_A["default"].weight, peft_layer.lora_B["default"].weight
    assert mine.rank == 8 and mine.frozen_rank == 4
    torch.testing.assert_close(mine.lora_A.weight[:4], peft_a, atol=1e-6, rtol=0)
    torch.testing.assert_close(mine.lora_B.weight[:, :4], peft_b, atol=1e-6, rtol=0)
    torch.testing.assert_close(mine.lora_A.weight.grad[:4], peft_a.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mine.lora_B.weight.grad[:, :4], peft_b.grad, atol=1e-5, rtol=1e-4)
    assert not mine.lora_A.weight.grad[4:].any() and not mine.lora_B.weight.grad[:, 4:].any()


def test_training_moves_the_trained_half_and_holds_the_start_even_under_weight_decay(tiny_model):
    model = tiny_model("bert", "classification")
    pc.add_adapter(model, "a", lora("pissa", dropout=0.1))
    mine = module_at(model, "0.attention.self.query")
    start_a, start_b = mine.lora_A.weight.detach().clone(), mine.lora_B.weight.detach().clone()
    inputs = batch(model, rows=4)
    loader = [{**inputs, "labels": torch.tensor([0, 1, 0, 1])}] * 5
    pc.train(model.train(), loader, max_steps=5, learning_rate=1e-2, weight_decay=0.5)
    assert torch.equal(mine.lora_A.weight[4:], start_a[4:])
    assert torch.equal(mine.lora_B.weight[:, 4:], start_b[:, 4:])
    assert not torch.allclose(mine.lora_A.weight[:4], start_a[:4], atol=1e-4)


def test_dropout_reaches_the_trained_half_only() -> None:
    module = LoRAModule(6, 5, rank=4, scaling=2.0, dropout=0.5)
    a, b = torch.randn(2, 6), torch.randn(5, 2)
    module.start_from(a, b)
    with torch.no_grad():
        module.lora_A.weight[:2] += 0.1 * torch.randn(2, 6)  # trained a little
    x = torch.randn(3, 6, requires_grad=True)
    torch.manual_seed(0)
    got = module.train()(x, torch.zeros(3, 5))
    torch.manual_seed(0)
    dropped = torch.nn.functional.dropout(x, 0.5, training=True)
    trained = dropped @ module.lora_A.weight[:2].T @ module.lora_B.weight[:, :2].T
    torch.testing.assert_close(got, 2.0 * (trained - x @ a.T @ b.T), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["adapterops", "peft"])
def test_it_saves_as_the_plain_lora_of_twice_the_rank(tiny_model, fmt, tmp_path: Path):
    torch.manual_seed(0)
    model = tiny_model("bert", "classification")
    pc.add_adapter(model, "a", lora("pissa"))
    with torch.no_grad():  # "trained"
        for name, tensor in pc.adapter_state_dict(model, "a").items():
            if ".lora_" in name:
                tensor.add_(0.05 * torch.randn_like(tensor))
    inputs = batch(model)
    expected = logits(model.eval(), inputs)
    pc.save_adapter(model, "a", tmp_path, format=fmt)  # type: ignore[arg-type]
    torch.manual_seed(0)
    fresh = tiny_model("bert", "classification")
    record = pc.load_adapter(fresh, tmp_path)
    assert (record.config.rank, record.config.alpha, record.config.init) == (8, 16.0, "default")
    torch.testing.assert_close(logits(fresh, inputs), expected, atol=1e-6, rtol=0)
    if fmt == "peft":
        torch.manual_seed(0)
        theirs = PeftModel.from_pretrained(tiny_model("bert", "classification"), tmp_path)
        torch.testing.assert_close(logits(theirs.eval(), inputs), expected, atol=1e-6, rtol=0)


def test_rows_through_a_started_lora_equal_running_it_alone(tiny_model):
    model = tiny_model("bert", "classification")
    pc.add_adapter(model, "started", lora("olora"))
    pc.add_adapter(model, "plain", pc.LoRA(rank=2, targets=("q", "v")))
    with torch.no_grad():
        for name in ("started", "plain"):
            for key, tensor in pc.adapter_state_dict(model, name).items():
                if ".lora_" in key:
                    tensor.add_(0.05 * torch.randn_like(tensor))
    inputs = batch(model, rows=2)
    alone = {}
    for name in ("started", "plain"):
        pc.set_active(model, name)
        alone[name] = logits(model, inputs)
    with torch.no_grad(), pc.per_row(model, ["started", "plain"]):
        mixed = model(**inputs).logits
    torch.testing.assert_close(mixed[0], alone["started"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[1], alone["plain"][1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_on_a_quantised_base_it_starts_from_the_values_the_layers_compute_with(quantization):
    """QLoRA with a PiSSA start: the quantised base stays as it is (unlike QPiSSA/LoftQ, whose
    residual is quantised anew), the start is the top of what the layer computes with."""
    config = LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=128,
    )  # fmt: skip  # NF4 needs weights of 16384 elements or more
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    pc.quantize_base(model, quantization)  # type: ignore[arg-type]
    inputs = batch(model)
    expected = logits(model, inputs)
    pc.add_adapter(model, "a", lora("pissa"))
    torch.testing.assert_close(logits(model, inputs), expected, atol=1e-4, rtol=0)
    layer = module_at(model, "layers.0.self_attn.q_proj")
    values = dequantized(model.model.layers[0].self_attn.q_proj.base_layer.weight)
    top = torch.linalg.svd(values, full_matrices=False)
    best = top.U[:, :4] @ torch.diag(top.S[:4]) @ top.Vh[:4]
    start = 2.0 * layer.lora_B.weight[:, :4] @ layer.lora_A.weight[:4]  # scaling 8 / 4
    torch.testing.assert_close(start, best, atol=1e-4, rtol=1e-4)


def test_the_start_is_not_counted_as_trained(tiny_model):
    counts = {}
    for init in ("default", "pissa"):
        model = tiny_model("bert", "classification")
        pc.add_adapter(model, "a", lora(init))
        counts[init] = pc.measure(model, "a").trainable_params
    assert counts["pissa"] == counts["default"]
    planned = pc.plan(TINY_CONFIGS["bert"](), lora("pissa"), head="classification")
    assert planned.trainable_params == counts["default"]


def test_a_randomised_svd_finds_a_clear_top_of_the_spectrum(tiny_model):
    """``init_iterations`` (peft's pissa_niter_N): where the weight has a clear top (as trained
    weights do), the randomised start is the exact one; either way it changes nothing."""
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(32, 32))
    v, _ = torch.linalg.qr(torch.randn(32, 32))
    spectrum = torch.cat([torch.tensor([10.0, 8.0, 6.0, 4.0]), 0.01 * torch.rand(28)])
    weight = u @ torch.diag(spectrum) @ v.T
    exact_a, exact_b = _start(weight, 4, 2.0, "pissa")
    fast_a, fast_b = _start(weight, 4, 2.0, "pissa", iterations=4)
    exact, fast = exact_b @ exact_a, fast_b @ fast_a
    assert torch.linalg.norm(fast - exact) < 1e-3 * torch.linalg.norm(exact)
    model = tiny_model("bert", "classification")
    inputs = batch(model)
    expected = logits(model, inputs)
    pc.add_adapter(model, "fast", lora("pissa", init_iterations=4))
    torch.testing.assert_close(logits(model, inputs), expected, atol=1e-5, rtol=0)


def test_an_unknown_init_is_a_config_error():
    with pytest.raises(
        pc.ConfigError, match="LoRA: init must be one of 'default', 'pissa', 'olora', got 'svd'"
    ):
        pc.LoRA(init="svd")  # type: ignore[arg-type]
    with pytest.raises(pc.ConfigError, match="init_iterations is for init: pissa"):
        pc.LoRA(init="olora", init_iterations=4)
