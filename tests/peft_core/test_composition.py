"""Composition blocks, per-row routing and weighted merges."""

from __future__ import annotations

import copy
import json
import re
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import peft_core as pc
from peft_core.parallel import parallel_adapters
from peft_core.state import get_record
from tests.helpers import batch, logits, perturb_adapter


def with_adapters(model, configs: dict[str, pc.MethodConfig]):
    for name, config in configs.items():
        pc.add_adapter(model, name, config)
        perturb_adapter(model, name)
    return model


class TestBlocks:
    def test_round_trip_and_nesting_rules(self):
        block = pc.Stack("pt", pc.Average("a", pc.Stack("b", "c"), weights=(0.5, 0.5)))
        assert pc.block_from_dict(pc.block_to_dict(block)) == block
        with pytest.raises(pc.CompositionError, match="Stack cannot be nested inside Fuse"):
            pc.block_from_dict({"type": "fuse", "children": [{"type": "stack", "children": ["a"]}]})
        with pytest.raises(pc.CompositionError, match="Parallel cannot be nested inside Parallel"):
            pc.block_from_dict(pc.block_to_dict(pc.Parallel("a", pc.Parallel("b"))))
        with pytest.raises(pc.CompositionError, match="2 adapters but 3 weights"):
            pc.Average("a", "b", weights=(1, 2, 3))
        for weight in (float("nan"), float("inf")):  # were accepted: NaN in every output
            with pytest.raises(pc.CompositionError, match="weights must be finite numbers"):
                pc.Average("a", "b", weights=(weight, 1))
        with pytest.raises(pc.CompositionError, match="weights must be finite numbers"):
            pc.block_from_dict({"type": "average", "children": ["a", "b"], "weights": [1, "NaN"]})
        # were Python's "could not convert string to float: 'x'" and float()'s TypeError; True
        # was read as 1.0
        for weight in ("x", None, [1], True):
            with pytest.raises(
                pc.CompositionError,
                match=rf"^each Average weight must be a number, got {re.escape(repr(weight))}$",
            ):
                pc.Average("a", "b", weights=(weight, 1))  # type: ignore[arg-type]
        assert pc.Average("a", "b", weights=("0.25", 0.75)).weights == (0.25, 0.75)  # JSON's
        for weights in ("12", 0.5):  # "12" was read digit by digit: weights (1.0, 2.0)
            with pytest.raises(
                pc.CompositionError,
                match=f"weights are a list of numbers, one per adapter, got {weights!r}$",
            ):
                pc.Average("a", "b", weights=weights)  # type: ignore[arg-type]
        # was accepted here and refused only when activated
        with pytest.raises(pc.CompositionError, match=r"^Stack's members are adapter names or "):
            pc.Stack("a", 3)  # type: ignore[arg-type]

    def test_set_active_validates_before_changing_anything(self, tiny_model):
        model = with_adapters(tiny_model("bert", "classification"), {"a": pc.LoRA()})
        inputs = batch(model)
        before = logits(model, inputs)
        with pytest.raises(
            pc.AdapterNotFoundError, match="no adapter 'zz'; adapters in this model: a"
        ):
            pc.set_active(model, pc.Stack("a", "zz"))
        with pytest.raises(pc.CompositionError, match=r"no Fusion adapter over \['a'\]"):
            pc.set_active(model, pc.Fuse("a"))
        with pytest.raises(pc.CompositionError, match="Parallel cannot be nested inside Stack"):
            pc.set_active(model, pc.Stack("a", pc.Parallel("a")))
        with pytest.raises(TypeError, match=r"or None for the base model; got 1$"):
            pc.set_active(model, 1)  # type: ignore[arg-type]  # was "'int' object is not iterable"
        torch.testing.assert_close(logits(model, inputs), before, rtol=0, atol=0)

    def test_an_adapter_named_twice_is_refused_with_what_to_do(self, tiny_model):
        model = with_adapters(
            tiny_model("bert", "classification"), {"a": pc.LoRA(), "b": pc.LoRA()}
        )
        pc.set_active(model, pc.Stack("a", "b"))
        inputs = batch(model)
        before = logits(model, inputs)
        for block, named in [
            (pc.Parallel("a", "a"), "'a'"),  # gave one output for twice the work
            (pc.Stack("a", "b", "a", "b"), "'a', 'b'"),  # ran a's weights twice
            (pc.Average("b", pc.Stack("a", "b")), "'b'"),
        ]:
            with pytest.raises(
                pc.CompositionError,
                match=rf"^{re.escape(repr(block))} names {named} more than once: each adapter "
                r"takes one place in a composition .*load_adapter\(\.\.\., name=\.\.\.\)",
            ):
                pc.set_active(model, block)
        assert pc.active_adapters(model) == ["a", "b"]
        assert parallel_adapters(model) == ()
        torch.testing.assert_close(logits(model, inputs), before, rtol=0, atol=0)


class TestStackAndAverage:
    def test_stack_of_bottlenecks_applies_one_after_the_other(self, tiny_model):
        model = with_adapters(
            tiny_model("bert", "masked-lm"),
            {"lang": pc.Pfeiffer(bottleneck=4), "task": pc.Pfeiffer(bottleneck=6)},
        )
        pc.set_active(model, pc.Stack("lang", "task"))
        layer = model.bert.encoder.layer[0].output.dense
        x = torch.randn(2, 5, 64)
        base = layer.base_layer(x)
        expected = layer.adapters["task"](x, layer.adapters["lang"](x, base))
        torch.testing.assert_close(layer(x), expected)
        assert pc.active_adapters(model) == ["lang", "task"]

    def test_lora_stack_adds_deltas_and_average_weighs_them(self, tiny_model):
        model = with_adapters(
            tiny_model("gpt2", "causal-lm"), {"a": pc.LoRA(rank=2), "b": pc.LoRA(rank=3)}
        )
        inputs = batch(model)
        pc.set_active(model, pc.Stack("a", "b"))
        stacked = logits(model, inputs)
        pc.set_active(model, pc.Average("a", "b", weights=(1.0, 1.0)))
        torch.testing.assert_close(logits(model, inputs), stacked, atol=1e-5, rtol=1e-5)
        pc.set_active(model, pc.Average("a", "b", weights=(1.0, 0.0)))
        averaged = logits(model, inputs)
        pc.set_active(model, "a")
        torch.testing.assert_close(averaged, logits(model, inputs), atol=1e-5, rtol=1e-5)

    def test_a_language_adapter_from_an_mlm_model_stacks_under_a_task_adapter(
        self, tiny_model, tmp_path
    ):
        mlm = with_adapters(tiny_model("bert", "masked-lm"), {"lang": pc.Pfeiffer(bottleneck=4)})
        pc.save_adapter(mlm, "lang", tmp_path / "lang")
        classifier = with_adapters(
            tiny_model("bert", "classification"), {"task": pc.Pfeiffer(bottleneck=4)}
        )
        pc.save_adapter(classifier, "task", tmp_path / "task")
        record = pc.load_adapter(classifier, tmp_path / "lang")
        assert not record.head.trainable  # no head of its own: the task adapter's head answers
        pc.set_active(classifier, pc.Stack("lang", "task"))
        assert classifier.classifier.active == "task"
        with pytest.raises(pc.AdapterFormatError, match="carries a trained classification head"):
            pc.load_adapter(mlm, tmp_path / "task")
        assert pc.list_adapters(mlm) == ["lang"]

    def test_the_head_follows_the_last_adapter_with_one(self, tiny_model):
        model = with_adapters(
            tiny_model("bert", "classification"), {"lang": pc.Pfeiffer(), "task": pc.LoRA()}
        )
        pc.set_active(model, pc.Stack("lang", "task"))
        assert model.classifier.active == "task"
        pc.set_active(model, None)
        assert model.classifier.active is None


class TestParallel:
    def test_one_output_per_adapter_in_one_pass(self, tiny_model):
        model = with_adapters(
            tiny_model("bert", "classification"),
            {"a": pc.LoRA(rank=2), "b": pc.Pfeiffer(bottleneck=3), "c": pc.BitFit()},
        )
        inputs = batch(model, rows=3)
        pc.set_active(model, pc.Parallel("a", "b", "c"))
        out = logits(model, inputs)
        assert out.shape[0] == 9
        split = pc.parallel_outputs(model, out)
        for name in ("a", "b", "c"):
            pc.set_active(model, name)
            torch.testing.assert_close(split[name], logits(model, inputs), atol=1e-5, rtol=1e-4)
        pc.set_active(model, None)  # leaves no hook behind
        assert logits(model, inputs).shape[0] == 3


class TestFusion:
    @pytest.fixture
    def model(self, tiny_model):
        return with_adapters(
            tiny_model("bert", "classification"),
            {"a": pc.Pfeiffer(bottleneck=3), "b": pc.Pfeiffer(bottleneck=5)},
        )

    def test_a_fresh_fusion_is_the_average_and_of_one_member_that_member(self, model):
        inputs = batch(model)
        pc.set_active(model, pc.Average("a", "b"))
        with torch.no_grad():
            average = model.bert(**inputs).last_hidden_state
        pc.add_adapter(model, "ab", pc.Fusion(members=("a", "b")))
        with torch.no_grad():
            fused = model.bert(**inputs).last_hidden_state
        torch.testing.assert_close(fused, average, atol=1e-5, rtol=1e-4)
        pc.set_active(model, pc.Fuse("a", "b"))  # the block finds the fusion over a, b
        assert model.classifier.active == "ab"
        pc.set_active(model, "ab")
        layer = model.bert.encoder.layer[0].output.dense
        x = torch.randn(2, 4, 64)
        y = layer.base_layer(x)
        fused = layer(x)
        expected = 0.5 * (layer.adapters["a"](x, y) + layer.adapters["b"](x, y))
        torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)
        pc.add_adapter(model, "only-a", pc.Fusion(members=("a",)))
        pc.set_active(model, "only-a")
        torch.testing.assert_close(layer(x), layer.adapters["a"](x, y), atol=1e-6, rtol=1e-6)

    def test_only_the_fusion_trains_and_it_round_trips(self, tiny_model, tmp_path):
        base = tiny_model("bert", "classification")
        pristine = copy.deepcopy(base)
        model = with_adapters(
            base, {"a": pc.Pfeiffer(bottleneck=3), "b": pc.Pfeiffer(bottleneck=5)}
        )
        pc.add_adapter(model, "ab", pc.Fusion(members=("a", "b")))
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(".adapters.ab." in n or ".heads.ab." in n for n in trainable)
        perturb_adapter(model, "ab")
        inputs = batch(model)
        expected = logits(model, inputs)
        for name in ("a", "b", "ab"):
            pc.save_adapter(model, name, tmp_path / name)
        with pytest.raises(pc.AdapterNotFoundError, match="no adapter 'a'"):
            pc.load_adapter(pristine, tmp_path / "ab")  # members first
        for name in ("a", "b", "ab"):
            pc.load_adapter(pristine, tmp_path / name)
        torch.testing.assert_close(logits(pristine, inputs), expected, rtol=0, atol=0)

    def test_bad_fusions(self, model):
        pc.add_adapter(model, "lora", pc.LoRA())
        with pytest.raises(pc.TargetError, match="bottleneck adapters"):
            pc.add_adapter(model, "bad", pc.Fusion(members=("a", "lora")))
        with pytest.raises(pc.CompositionError, match=r"no Fusion adapter over \['a', 'b'\]"):
            pc.set_active(model, pc.Fuse("a", "b"))
        pc.add_adapter(model, "ab", pc.Fusion(members=("a", "b")))
        with pytest.raises(pc.NotMergeableError, match="AdapterFusion"):
            pc.merge(model, "ab")
        with (
            pytest.raises(pc.ConfigError, match="cannot route FusionModule"),
            pc.per_row(model, ["ab"]),
        ):
            pass


ROUTED = {
    "lora": pc.LoRA(rank=2, targets=("q", "v")),
    "lora-wide": pc.LoRA(rank=5, targets=("q", "v")),
    "bitfit": pc.BitFit(),
    "pfeiffer": pc.Pfeiffer(bottleneck=3),
    "houlsby": pc.Houlsby(bottleneck=7),
}


ROUTED_FOR_GENERATION = {
    "lora": pc.LoRA(rank=2, targets=("q", "v")),
    "lora-wide": pc.LoRA(rank=5, targets=("q", "v")),
    "pfeiffer": pc.Pfeiffer(bottleneck=3),
}


class TestPerRow:
    @pytest.mark.parametrize("kernel", ["gather", "segmented", "triton"])
    @pytest.mark.parametrize(
        ("family", "head"),
        [("bert", "classification"), ("gpt2", "causal-lm"), ("llama", "causal-lm")],
    )
    def test_each_row_equals_running_it_alone(self, tiny_model, family, head, kernel):
        configs = dict(ROUTED)
        if family == "llama":
            del configs["bitfit"]  # no biases
        model = with_adapters(tiny_model(family, head), configs)
        names = [*configs, None, "lora"]
        inputs = batch(model, rows=len(names))
        with pc.per_row(model, names, kernel=kernel):
            routed = logits(model, inputs)
        for row, name in enumerate(names):
            pc.set_active(model, name)
            alone = logits(model, {k: v[row : row + 1] for k, v in inputs.items()})
            torch.testing.assert_close(
                routed[row : row + 1], alone, atol=1e-5, rtol=1e-4, msg=f"row {row} ({name})"
            )
        assert pc.list_adapters(model)  # routing left the adapters in place

    @pytest.mark.parametrize("kernel", ["gather", "segmented", "triton", "auto"])
    def test_generation_with_an_adapter_per_row_equals_each_row_alone(
        self, tiny_model, kernel, monkeypatch
    ):
        """``generate`` under ``per_row``: left-padded prompts of different lengths, a KV cache,
        greedy decoding; each row's tokens are the ones its adapter gives it alone. ``auto``
        switches kernels inside one ``generate``: on a GPU, Triton for the prefill and gather
        for each new token; here its rule is told to do so (Triton runs in its interpreter)."""
        picked: list[str] = []

        def as_on_a_gpu(x: torch.Tensor, *, triton_ready: bool) -> str:
            picked.append("triton" if x.dim() == 3 and x.shape[1] > 1 else "gather")
            return picked[-1]

        monkeypatch.setattr(pc.routing, "auto_kernel", as_on_a_gpu)
        model = tiny_model("llama", "causal-lm")
        for scale, (name, config) in zip(
            (0.2, 0.5, 0.8), ROUTED_FOR_GENERATION.items(), strict=True
        ):
            pc.add_adapter(model, name, config)
            perturb_adapter(model, name, scale=scale)  # each adapter its own weights
        rows = ["lora", "pfeiffer", None, "lora-wide"]
        prompts = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16], [17, 18]]
        width = max(map(len, prompts))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        options = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
        with torch.no_grad(), pc.per_row(model, rows, kernel=kernel):
            together = model.generate(input_ids=ids, attention_mask=mask, **options)
        differs_from_base = []
        for row, (prompt, name) in enumerate(zip(prompts, rows, strict=True)):
            answers = {}
            for adapter in (name, None):
                pc.set_active(model, adapter)
                with torch.no_grad():
                    alone = model.generate(input_ids=torch.tensor([prompt]), **options)
                answers[adapter] = alone[0, len(prompt) :].tolist()
            assert together[row, width:].tolist() == answers[name], name
            differs_from_base.append(answers[name] != answers[None])
        assert differs_from_base == [True, True, False, True]  # the adapters change the answer
        assert set(picked) == ({"triton", "gather"} if kernel == "auto" else set())

    def test_beam_search_takes_each_rows_name_once_per_beam(self, tiny_model):
        """generate repeats each prompt num_beams times: names for the prompts alone were "2 row
        names for a batch of 4 rows"; said with the fix, and the fix gives each row's beams."""
        model = tiny_model("llama", "causal-lm")
        for scale, name, config in ((0.5, "a", pc.LoRA(rank=2)), (0.8, "b", pc.Pfeiffer())):
            pc.add_adapter(model, name, config)
            perturb_adapter(model, name, scale=scale)
        prompts = torch.tensor([[5, 6, 7], [8, 9, 10]])
        options = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0, "num_beams": 2}
        with (
            torch.no_grad(),
            pc.per_row(model, ["a", "b"]),
            pytest.raises(pc.ConfigError) as raised,
        ):
            model.generate(input_ids=prompts, **options)
        assert str(raised.value) == (
            "per_row was given 2 row names for a batch of 4 rows: generate with num_beams or "
            "num_return_sequences 2 repeats each row 2 times; give each row's name 2 times too "
            "([name for name in names for _ in range(2)])"
        )
        with torch.no_grad(), pc.per_row(model, ["a", "a", "b", "b"]):
            together = model.generate(input_ids=prompts, **options)
        for row, name in enumerate(["a", "b"]):
            answers = {}
            for adapter in ("a", "b"):
                pc.set_active(model, adapter)
                with torch.no_grad():
                    answers[adapter] = model.generate(input_ids=prompts[row : row + 1], **options)
            assert together[row].tolist() == answers[name][0].tolist(), name
            assert answers["a"].tolist() != answers["b"].tolist()  # the row's adapter decides

    def test_many_loras_in_one_batch(self, tiny_model):
        model = tiny_model("bert", "classification")
        names = [f"a{i}" for i in range(8)]
        with_adapters(model, {n: pc.LoRA(rank=2 + i % 3) for i, n in enumerate(names)})
        rows = [names[i % 8] for i in range(16)]
        inputs = batch(model, rows=16)
        with pc.per_row(model, rows):
            routed = logits(model, inputs)
        with pc.per_row(model, rows, kernel="segmented"):
            segmented = logits(model, inputs)
        torch.testing.assert_close(segmented, routed, atol=1e-5, rtol=1e-4)
        for row in (0, 5, 11):
            pc.set_active(model, rows[row])
            alone = logits(model, {k: v[row : row + 1] for k, v in inputs.items()})
            torch.testing.assert_close(routed[row : row + 1], alone, atol=1e-5, rtol=1e-4)

    @pytest.mark.parametrize("kernel", ["segmented", "triton"])
    def test_the_lora_kernels_leave_dora_to_its_own_step(self, tiny_model, kernel):
        """DoRA's modules are LoRA modules with their own ``batched``: the segmented or Triton
        LoRA step must not replace it (its magnitudes would be lost)."""
        model = with_adapters(
            tiny_model("llama", "causal-lm"), {"d": pc.DoRA(rank=4), "l": pc.LoRA(rank=4)}
        )
        rows = ["d", "l", None, "d"]
        inputs = batch(model, rows=4)
        with torch.no_grad(), pc.per_row(model, rows, kernel=kernel):
            segmented = logits(model, inputs)
        with pc.per_row(model, rows):
            gathered = logits(model, inputs)
        torch.testing.assert_close(segmented, gathered, atol=1e-5, rtol=1e-4)
        with (
            pytest.raises(
                pc.ConfigError, match="kernel must be one of gather, segmented, auto, triton"
            ),
            pc.per_row(model, rows, kernel="sgmv"),  # type: ignore[arg-type]
        ):
            pass

    def test_auto_takes_triton_or_the_grouped_gemm_only_for_a_half_precision_prefill_on_cuda(
        self, tiny_model
    ):
        """The rule on fake CUDA tensors (shapes and devices, no GPU needed): Triton where it
        runs, else the grouped GEMM, for a half-precision prefill on CUDA; gather elsewhere.
        Then ``auto`` on this CPU: gather's outputs, bit for bit."""
        with FakeTensorMode():
            shapes = {"prefill": (4, 9, 16), "decode": (4, 1, 16), "flat": (36, 16)}
            picks = {
                (where, dtype, phase, ready): pc.routing.auto_kernel(
                    torch.empty(shape, device=where, dtype=dtype), triton_ready=ready
                )
                for where in ("cuda", "cpu")
                for dtype in (torch.bfloat16, torch.float16, torch.float32)
                for phase, shape in shapes.items()
                for ready in (True, False)
            }
        assert {k: kernel for k, kernel in picks.items() if kernel != "gather"} == {
            ("cuda", torch.bfloat16, "prefill", True): "triton",
            ("cuda", torch.bfloat16, "prefill", False): "segmented",
            ("cuda", torch.float16, "prefill", True): "triton",
            ("cuda", torch.float16, "prefill", False): "segmented",
        }
        assert not pc.routing.triton_runs_on(torch.device("cpu"))
        model = with_adapters(tiny_model("llama", "causal-lm"), {"a": pc.LoRA(), "b": pc.LoRA()})
        rows = ["a", "b", None, "b"]
        inputs = batch(model, rows=4)
        outputs = {}
        for kernel in ("gather", "auto"):
            with pc.per_row(model, rows, kernel=kernel):
                outputs[kernel] = logits(model, inputs)
        assert torch.equal(outputs["auto"], outputs["gather"])

    def test_bad_routing(self, tiny_model):
        model = with_adapters(tiny_model("bert", "classification"), {"a": pc.LoRA()})
        with (
            pytest.raises(pc.AdapterNotFoundError, match="no adapter 'b'"),
            pc.per_row(model, ["a", "b"]),
        ):
            pass
        with (
            pytest.raises(pc.ConfigError, match="2 row names for a batch of 3 rows"),
            pc.per_row(model, ["a", None]),
        ):
            logits(model, batch(model, rows=3))
        with (  # "aa" was two rows, each through adapter "a"
            pytest.raises(pc.ConfigError, match=r"got the string 'aa': \['aa'\] for one row"),
            pc.per_row(model, "aa"),
        ):
            pass
        with (  # ids instead of names: was "model has no adapter tensor(0)"
            pytest.raises(pc.ConfigError) as raised,
            pc.per_row(model, torch.tensor([0, 1])),
        ):
            pass
        assert str(raised.value) == (
            "per_row takes adapter names (or None for the base), one per batch row; row 0 is "
            "Tensor tensor(0): map ids to names first, e.g. [names[i] for i in ids]"
        )
        inputs = batch(model, rows=2)
        with pc.per_row(model, ["a", None]):
            listed = logits(model, inputs)
        with pc.per_row(model, np.array(["a", None], dtype=object)):  # NumPy's names are names
            torch.testing.assert_close(logits(model, inputs), listed, rtol=0, atol=0)
        with pc.per_row(model, (name for name in ["a", None])):  # was "generator has no len()"
            torch.testing.assert_close(logits(model, inputs), listed, rtol=0, atol=0)
        pc.merge(model, "a")
        with pytest.raises(pc.ConfigError, match="unmerge"), pc.per_row(model, ["a"]):
            pass


class TestMergeAdapters:
    def test_lora_concatenation_is_exact(self, tiny_model):
        model = with_adapters(
            tiny_model("gpt2", "causal-lm"), {"a": pc.LoRA(rank=2), "b": pc.LoRA(rank=3)}
        )
        inputs = batch(model)
        pc.set_active(model, pc.Average("a", "b", weights=(0.7, 0.3)))
        expected = logits(model, inputs)
        report = pc.combine_adapters(model, {"a": 0.7, "b": 0.3}, name="ab")
        assert (report.exact, report.relative_error) == (True, 0.0)
        pc.set_active(model, "ab")
        torch.testing.assert_close(logits(model, inputs), expected, atol=1e-5, rtol=1e-4)

    def test_lora_svd_reports_its_loss(self, tiny_model):
        model = with_adapters(
            tiny_model("bert", "classification"), {"a": pc.LoRA(rank=4), "b": pc.LoRA(rank=4)}
        )
        full = pc.combine_adapters(model, {"a": 0.5, "b": 0.5}, name="svd8", how="svd", rank=8)
        small = pc.combine_adapters(model, {"a": 0.5, "b": 0.5}, name="svd2", how="svd", rank=2)
        assert full.relative_error < 1e-5  # rank 8 holds a sum of two rank-4 deltas
        assert 0.05 < small.relative_error < 1.0 and not small.exact
        inputs = batch(model)
        pc.set_active(model, pc.Average("a", "b", weights=(0.5, 0.5)))
        expected = logits(model, inputs)
        pc.set_active(model, "svd8")
        torch.testing.assert_close(logits(model, inputs), expected, atol=1e-4, rtol=1e-4)
        pc.set_active(model, "svd2")
        assert not torch.allclose(logits(model, inputs), expected, atol=1e-4)

    def test_bitfit_is_exact_and_mixed_methods_are_refused(self, tiny_model):
        model = with_adapters(
            tiny_model("bert", "masked-lm"), {"a": pc.BitFit(), "b": pc.BitFit(), "c": pc.LoRA()}
        )
        inputs = batch(model)
        pc.set_active(model, pc.Average("a", "b", weights=(0.25, 0.75)))
        expected = logits(model, inputs)
        assert pc.combine_adapters(model, {"a": 0.25, "b": 0.75}, name="ab").exact
        pc.set_active(model, "ab")
        torch.testing.assert_close(logits(model, inputs), expected, atol=1e-5, rtol=1e-4)
        with pytest.raises(pc.ConfigError) as raised:  # "cannot merge": merge is the base's
            pc.combine_adapters(model, {"a": 0.5, "c": 0.5}, name="bad")
        assert str(raised.value) == (
            "cannot combine 'a' (bitfit) with 'c' (lora): sources must use the same method"
        )
        with pytest.raises(pc.ConfigError) as raised:  # made an adapter of NaN
            pc.combine_adapters(model, {"a": float("nan"), "b": 0.5}, name="bad")
        assert str(raised.value) == (
            "combine_adapters weights must be finite numbers, got {'a': nan, 'b': 0.5}"
        )
        with pytest.raises(pc.ConfigError) as raised:  # Python's "could not convert string"
            pc.combine_adapters(model, {"a": "x", "b": 0.5}, name="bad")  # type: ignore[dict-item]
        assert str(raised.value) == "combine_adapters' weight of 'a' must be a number, got 'x'"
        assert "bad" not in pc.list_adapters(model)


def scrambled(model, names_and_configs: dict[str, pc.MethodConfig]):
    """Adapters with weights (and heads) of their own: a distinct seed for each."""
    for seed, (name, config) in enumerate(names_and_configs.items()):
        pc.add_adapter(model, name, config)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for tensor in pc.adapter_state_dict(model, name).values():
                tensor.add_(0.3 * torch.randn(tensor.shape, generator=generator))
    return model


class TestFlatten:
    """One adapter computing what a stack or an average computes (for one-adapter engines)."""

    BLOCKS: ClassVar[dict[str, pc.Block]] = {
        "stack": pc.Stack("a", "b", "c"),
        "nested average": pc.Average(pc.Stack("a", "b"), "c", weights=(0.3, 0.7)),
    }

    @pytest.mark.parametrize("block", list(BLOCKS))
    def test_a_lora_block_becomes_one_adapter_with_its_head(self, tiny_model, block, tmp_path):
        from peft import PeftModel

        base = tiny_model("bert", "classification")
        untouched = copy.deepcopy(base)
        model = scrambled(base, {"a": pc.LoRA(rank=2), "b": pc.LoRA(rank=3), "c": pc.LoRA(rank=4)})
        inputs = batch(model)
        pc.set_active(model, self.BLOCKS[block])
        expected = logits(model, inputs)
        report = pc.flatten_composition(model, self.BLOCKS[block], name="flat")
        assert report.exact and get_record(model, "flat").config.rank == 9
        pc.set_active(model, "flat")
        torch.testing.assert_close(logits(model, inputs), expected, atol=1e-5, rtol=1e-4)
        pc.set_active(model, "c")  # the block answers with c's head, so does flat: not c alone
        assert not torch.allclose(logits(model, inputs), expected, atol=1e-3)
        # what serving engines read: the PEFT files, loaded by peft itself
        pc.save_adapter(model, "flat", tmp_path, format="peft")
        theirs = PeftModel.from_pretrained(untouched, tmp_path).eval()
        torch.testing.assert_close(logits(theirs, inputs), expected, atol=1e-5, rtol=1e-4)

    def test_leaf_weights_multiply_through_nesting(self):
        assert pc.leaf_weights(self.BLOCKS["nested average"]) == {"a": 0.3, "b": 0.3, "c": 0.7}
        assert pc.leaf_weights(pc.Stack("a", "a")) == {"a": 2.0}

    @pytest.mark.parametrize("family", ["bert", "gpt2"])  # gpt2: slices of the fused c_attn
    def test_members_on_different_modules_flatten_with_one_rank_everywhere(
        self, tiny_model, family, tmp_path
    ):
        from peft import PeftModel

        head = "classification" if family == "bert" else "causal-lm"
        base = tiny_model(family, head)
        untouched = copy.deepcopy(base)
        members = {
            "language": pc.LoRA(rank=2, targets=("q", "v")),
            "task": pc.LoRA(rank=3, targets=("q", "v", "ffn_in")),
        }
        model = scrambled(base, members)
        inputs = batch(model)
        pc.set_active(model, pc.Stack("language", "task"))
        expected = logits(model, inputs)
        report = pc.flatten_composition(model, pc.Stack("language", "task"), name="flat")
        record = get_record(model, "flat")
        assert report.exact and (record.config.rank, record.lora_overrides) == (5, {})
        assert {t.role for t in record.targets} == {"q", "v", "ffn_in"}
        pc.set_active(model, "flat")
        torch.testing.assert_close(logits(model, inputs), expected, atol=1e-5, rtol=1e-4)
        pc.save_adapter(model, "flat", tmp_path, format="peft")
        written = json.loads((tmp_path / "adapter_config.json").read_text())
        if family == "bert":  # (GPT-2's q and v slices are one LoRA of twice the rank on c_attn)
            assert (written["r"], written["rank_pattern"]) == (5, {})  # vLLM reads r alone
        theirs = PeftModel.from_pretrained(untouched, tmp_path).eval()
        torch.testing.assert_close(logits(theirs, inputs), expected, atol=1e-5, rtol=1e-4)

    def test_combining_over_different_modules_keeps_each_modules_own_rank(self, tiny_model):
        model = scrambled(
            tiny_model("bert", "classification"),
            {"a": pc.LoRA(rank=2, targets=("q", "v")), "b": pc.LoRA(rank=3, targets=("v",))},
        )
        inputs = batch(model)

        @torch.no_grad()
        def body(active: pc.Block | str) -> torch.Tensor:  # combine averages heads: bodies only
            pc.set_active(model, active)
            return model.bert(**inputs).last_hidden_state

        expected = body(pc.Average("a", "b", weights=(0.25, 0.75)))
        pc.combine_adapters(model, {"a": 0.25, "b": 0.75}, name="both")
        record = get_record(model, "both")
        v_layers = {t.module_name for t in record.targets if t.role == "v"}
        # q: a's rank 2 (two layers); v: 2 + 3 (two layers): a tie, either is the config's
        ranks = {t.module_name: record.lora_overrides.get(t.module_name, (record.config.rank,))[0]
                 for t in record.targets}  # fmt: skip
        assert ranks == {m: 5 if m in v_layers else 2 for m in ranks} and len(ranks) == 4
        torch.testing.assert_close(body("both"), expected, atol=1e-5, rtol=1e-4)

    def test_weights_that_are_not_a_mapping_and_a_rank_that_is_not_a_number_are_named(
        self, tiny_model
    ):
        model = with_adapters(
            tiny_model("bert", "classification"), {"a": pc.LoRA(), "b": pc.LoRA()}
        )
        with pytest.raises(
            pc.ConfigError, match=r"\{'a': 0.5, 'b': 0.5\}\), not list \['a', 'b'\]"
        ):
            pc.combine_adapters(model, ["a", "b"], name="ab")  # type: ignore[arg-type]
        with pytest.raises(pc.ConfigError, match="rank must be a whole number, got '4'"):
            pc.combine_adapters(model, {"a": 0.5, "b": 0.5}, name="ab", how="svd", rank="4")  # type: ignore[arg-type]
        assert pc.list_adapters(model) == ["a", "b"]
        # a NumPy integer is a whole number (computed from an array of ranks, say)
        report = pc.combine_adapters(
            model, {"a": 0.5, "b": 0.5}, name="ab", how="svd", rank=np.int64(4)
        )
        assert report.name == "ab" and pc.list_adapters(model) == ["a", "b", "ab"]

    def test_what_does_not_add_up_is_refused_before_anything_is_added(self, tiny_model):
        model = scrambled(
            tiny_model("bert", "classification"),
            {"a": pc.LoRA(rank=2), "p": pc.Pfeiffer(), "q": pc.Pfeiffer()},
        )
        gpt2 = scrambled(
            tiny_model("gpt2", "causal-lm"),
            {"q": pc.LoRA(targets=("q",)), "qv": pc.LoRA(targets=("q", "v"))},
        )
        for on, block, error, words in [
            (model, pc.Parallel("a", "p"), pc.CompositionError, "Parallel block does not flatten"),
            (model, pc.Stack("p", "q"), pc.ConfigError, "pfeiffer adapters do not flatten"),
            (model, pc.Stack("a", "p"), pc.ConfigError, "same method"),
            (gpt2, pc.Stack("q", "qv"), pc.ConfigError, r"different parts of transformer.h.0"),
        ]:
            with pytest.raises(error, match=words):
                pc.flatten_composition(on, block, name="flat")
            assert "flat" not in pc.list_adapters(on)
