"""The training loop: a resumed run ends where an uninterrupted one does; bf16 autocast trains."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import peft_core as pc
from tests.helpers import TINY_CONFIGS, VOCAB


class Crash(Exception):
    pass


def model_with_lora() -> torch.nn.Module:
    import transformers as T

    torch.manual_seed(0)
    config = TINY_CONFIGS["bert"]()
    model = T.AutoModelForSequenceClassification.from_config(config)
    pc.add_adapter(model, "a", pc.LoRA(rank=4, dropout=0.1))  # dropout: the RNG state matters
    return model


def batches(count: int = 5) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    return [
        {
            "input_ids": torch.randint(5, 90, (4, 9), generator=generator),
            "attention_mask": torch.ones(4, 9, dtype=torch.long),
            "labels": torch.randint(0, 3, (4,), generator=generator),
        }
        for _ in range(count)
    ]


def trainable_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


OPTIONS = {"max_steps": 8, "learning_rate": 1e-2, "gradient_accumulation_steps": 2}


class TestCheckpoints:
    def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(self, tmp_path: Path):
        whole = model_with_lora()
        torch.manual_seed(123)
        expected = pc.train(whole, batches(), **OPTIONS)

        crashed = model_with_lora()
        torch.manual_seed(123)

        def crash_at_step_5(step: int, loss: float, lr: float) -> None:
            if step == 5:
                raise Crash

        with pytest.raises(Crash):
            pc.train(
                crashed, batches(), checkpoint_dir=tmp_path, checkpoint_every=3,
                on_step=crash_at_step_5, **OPTIONS,
            )  # fmt: skip
        assert (tmp_path / pc.training.CHECKPOINT_FILE).is_file()

        resumed = model_with_lora()
        with torch.no_grad():  # a different adapter start: the checkpoint must overwrite it
            for param in trainable_params(resumed):
                param.add_(torch.randn_like(param))
        result = pc.train(
            resumed, batches(), checkpoint_dir=tmp_path, checkpoint_every=3, **OPTIONS
        )
        assert result.resumed_from == 3
        assert result.losses == pytest.approx(expected.losses, rel=1e-5)
        for name, value in trainable(whole).items():
            torch.testing.assert_close(trainable(resumed)[name], value)

    def test_a_checkpoint_of_another_model_is_refused(self, tmp_path: Path):
        model = model_with_lora()
        pc.train(model, batches(), max_steps=2, learning_rate=1e-3, checkpoint_dir=tmp_path)
        other = model_with_lora()
        pc.add_adapter(other, "b", pc.BitFit())
        with pytest.raises(pc.CheckpointMismatchError, match="does not belong to this run"):
            pc.train(other, batches(), max_steps=4, learning_rate=1e-3, checkpoint_dir=tmp_path)

    def test_a_checkpoint_of_a_sharded_run_is_refused_by_a_replicated_one(self, tmp_path: Path):
        pc.train(model_with_lora(), batches(), max_steps=2, learning_rate=1e-3,
                 checkpoint_dir=tmp_path)  # fmt: skip
        (file,) = tmp_path.iterdir()
        state = torch.load(file, weights_only=False)
        torch.save({**state, "sharded": True}, file)  # as an FSDP run writes it
        with pytest.raises(pc.CheckpointMismatchError, match=r"written by a sharded \(FSDP\) "
                           r"run: resume it with the same train\.sharding"):  # fmt: skip
            pc.train(model_with_lora(), batches(), max_steps=4, learning_rate=1e-3,
                     checkpoint_dir=tmp_path)  # fmt: skip
        assert torch.load(file, weights_only=False)["sharded"] is True  # left as it was

    def test_a_finished_checkpoint_is_not_trained_again(self, tmp_path: Path):
        model = model_with_lora()
        pc.train(model, batches(), max_steps=4, learning_rate=1e-3, checkpoint_dir=tmp_path)
        again = pc.train(
            model_with_lora(), batches(), max_steps=4, learning_rate=1e-3, checkpoint_dir=tmp_path
        )
        assert again.resumed_from == 4
        assert len(again.losses) == 4


class TestPrecision:
    def test_bf16_autocast_trains_and_keeps_fp32_weights(self):
        model = model_with_lora()
        before = trainable(model)
        result = pc.train(
            model, batches(), max_steps=6, learning_rate=1e-2, precision="bf16", warmup_ratio=0
        )
        assert all(torch.isfinite(torch.tensor(result.losses)))
        after = trainable(model)
        assert all(value.dtype == torch.float32 for value in after.values())
        assert any(not torch.equal(after[n], before[n]) for n in before)

    @staticmethod
    def fp16_llama_whose_gradients_underflow() -> torch.nn.Module:
        """A float16 base whose logits are scaled by 1e-6 on the way out: the loss stays
        readable (float32 in transformers), but its gradients come back into the float16
        network ~1e-6 times smaller, below float16's smallest number, unless the loss is
        scaled up first."""
        import transformers as T

        torch.manual_seed(0)
        model = T.LlamaForCausalLM(TINY_CONFIGS["llama"]()).to(torch.float16)
        model.lm_head.register_forward_hook(lambda module, inputs, output: output * 1e-6)
        pc.add_adapter(model, "a", pc.LoRA(rank=4, targets=("q", "v", "ffn_out")))
        return model

    # fp32: no autocast, the float16 base backpropagates in float16 and the gradients vanish;
    # bf16 autocast computes with float32's exponent range; fp16 scales the loss
    @pytest.mark.parametrize(
        ("precision", "learns"), [("fp32", False), ("bf16", True), ("fp16", True)]
    )
    def test_fp16_scales_the_loss_so_small_gradients_survive(self, precision, learns):
        model = self.fp16_llama_whose_gradients_underflow()
        before = trainable(model)
        ids = torch.randint(3, 100, (4, 12), generator=torch.Generator().manual_seed(1))
        result = pc.train(model, [{"input_ids": ids, "labels": ids}], max_steps=3,
                          learning_rate=1e-2, warmup_ratio=0, precision=precision)  # fmt: skip
        assert all(torch.isfinite(torch.tensor(result.losses)))
        after = trainable(model)
        assert all(value.dtype == torch.float32 for value in after.values())
        changed = [n for n in before if not torch.equal(after[n], before[n])]
        # lora_B starts at zero: it moves only if a gradient reached it
        assert bool(changed) is learns, changed

    def test_an_fp16_run_resumes_with_its_loss_scale(self, tmp_path: Path):
        options = {"max_steps": 6, "learning_rate": 1e-2, "precision": "fp16",
                   "checkpoint_dir": tmp_path, "checkpoint_every": 3}  # fmt: skip
        whole = pc.train(self.fp16_llama_whose_gradients_underflow(), self.data(), **options)
        state = torch.load(tmp_path / pc.training.CHECKPOINT_FILE, weights_only=False)
        assert state["scaler"]["scale"] > 1.0  # the scale it reached is kept
        for file in tmp_path.iterdir():
            file.unlink()

        def crash_at_step_4(step: int, loss: float, lr: float) -> None:
            if step == 4:
                raise Crash

        with pytest.raises(Crash):
            pc.train(self.fp16_llama_whose_gradients_underflow(), self.data(),
                     on_step=crash_at_step_4, **options)  # fmt: skip
        model = self.fp16_llama_whose_gradients_underflow()
        resumed = pc.train(model, self.data(), **options)
        assert resumed.resumed_from == 3
        assert resumed.losses == pytest.approx(whole.losses, rel=1e-6)

    @staticmethod
    def data() -> list[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(3)
        ids = [torch.randint(3, 100, (2, 10), generator=generator) for _ in range(3)]
        return [{"input_ids": i, "labels": i} for i in ids]


class TestDivergence:
    """A NaN loss that leaves the weights NaN stops training at that step: it ran every
    remaining step on NaN, then saved an adapter that scores nothing."""

    def test_weights_that_are_no_longer_numbers_stop_training_at_that_step(self):
        model = model_with_lora()
        steps: list[int] = []

        def poison_after_step_3(step: int, loss: float, lr: float) -> None:
            steps.append(step)
            if step == 2:  # as a step with a far too large learning rate leaves them
                with torch.no_grad():
                    trainable_params(model)[0].fill_(float("inf"))

        with pytest.raises(pc.TrainingDivergedError) as diverged:
            pc.train(model, batches(), max_steps=8, learning_rate=1e-2, warmup_ratio=0,
                     on_step=poison_after_step_3)  # fmt: skip
        assert steps == [0, 1, 2, 3]  # the fourth step's loss was NaN: no fifth
        assert str(diverged.value) == (
            "training diverged at step 4: its loss is nan and the weights that train are no "
            "longer finite numbers, so no later step can recover them; lower learning_rate "
            "(0.00625 at this step) or warm it up (warmup_ratio), and check the data"
        )

    def test_an_fp16_step_skipped_for_its_nan_loss_does_not_stop_training(self):
        """fp16's loss scaling skips a step whose gradients are not finite: the weights stay
        numbers, so a NaN loss there is no divergence."""
        model = TestPrecision.fp16_llama_whose_gradients_underflow()
        calls = iter(range(100))

        def nan_on_the_second_forward(module, inputs, output):
            return output * float("nan") if next(calls) == 1 else output

        model.lm_head.register_forward_hook(nan_on_the_second_forward)
        result = pc.train(model, TestPrecision.data(), max_steps=4, learning_rate=1e-2,
                          warmup_ratio=0, precision="fp16")  # fmt: skip
        assert [math.isnan(loss) for loss in result.losses] == [False, True, False, False]
        assert all(torch.isfinite(p).all() for p in trainable_params(model))

    def test_an_fp16_forward_that_overflows_at_every_step_stops_training(self):
        """Each step was skipped for its NaN loss and the run went on to the end, learning
        nothing, then saved the adapter unchanged."""
        model = TestPrecision.fp16_llama_whose_gradients_underflow()
        model.lm_head.register_forward_hook(lambda module, inputs, output: output * float("inf"))
        before = trainable(model)
        steps: list[int] = []
        with pytest.raises(pc.TrainingDivergedError) as stopped:
            pc.train(model, TestPrecision.data(), max_steps=40, learning_rate=1e-2,
                     warmup_ratio=0, precision="fp16",
                     on_step=lambda step, loss, lr: steps.append(step))  # fmt: skip
        assert steps == list(range(pc.training.NOT_FINITE_IN_A_ROW))
        assert str(stopped.value) == (
            "training stopped at step 10: the loss has not been a finite number since step 1 "
            "(10 steps in a row, each skipped: nothing was learned); the forward pass overflows "
            "float16: train with precision bf16 (where the GPU has it) or fp32"
        )
        after = trainable(model)
        assert all(torch.equal(after[n], before[n]) for n in before)


class TestGradientCheckpointing:
    """Recomputing blocks in the backward pass changes memory, not the numbers."""

    @pytest.mark.parametrize("family", ["bert", "llama"])
    def test_same_losses_and_weights_and_the_blocks_really_run_twice(self, family):
        import transformers as T

        runs = {}
        for checkpointing in (False, True):
            torch.manual_seed(0)
            config = TINY_CONFIGS[family]()
            config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
            model = T.AutoModelForSequenceClassification.from_config(config)
            pc.add_adapter(model, "a", pc.LoRA(rank=4))
            # a module inside the first block; its forward runs again when the block is
            # recomputed (module hooks do not: torch's checkpoint replays forward alone)
            inner = (
                model.base_model.encoder.layer[0].intermediate
                if family == "bert"
                else model.model.layers[0].mlp
            )
            calls: list[int] = []
            plain_forward = inner.forward

            def counted(*args, seen=calls, run=plain_forward, **kwargs):
                seen.append(1)
                return run(*args, **kwargs)

            inner.forward = counted
            result = pc.train(
                model, batches(), max_steps=3, learning_rate=1e-2,
                gradient_checkpointing=checkpointing,
            )  # fmt: skip
            runs[checkpointing] = (result.losses, trainable(model), len(calls))
            assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        (plain_losses, plain, plain_calls), (losses, weights, calls) = runs[False], runs[True]
        assert losses == pytest.approx(plain_losses, abs=1e-6)
        assert all(torch.allclose(weights[k], plain[k], atol=1e-6) for k in plain)
        assert (plain_calls, calls) == (3, 6)  # forward, then again in the backward pass

    def test_a_model_without_it_is_a_clear_error(self):
        model = torch.nn.Sequential(torch.nn.Linear(4, 4))
        model[0].weight.requires_grad_(True)
        with pytest.raises(pc.ConfigError, match="does not support gradient checkpointing"):
            pc.train(model, [], max_steps=1, learning_rate=1e-3, gradient_checkpointing=True)


class TestMistakes:
    """What a user gets wrong calling ``pc.train`` is one sentence, before any step."""

    def test_batches_without_labels_say_so(self):
        model = model_with_lora()
        unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in batches(2)]
        with pytest.raises(ValueError) as raised:  # was: unsupported operand NoneType / int
            pc.train(model, unlabelled, max_steps=1, learning_rate=1e-3)
        assert str(raised.value) == (
            "the model returned no loss: each batch must hold `labels` (class ids for a "
            "classifier, token ids for a language model) beside its inputs"
        )

    @pytest.mark.parametrize(("steps", "accumulation"), [(0, 1), (2, 0)])
    def test_no_steps_is_refused_and_nothing_changes(self, steps, accumulation):
        model = model_with_lora()
        before = trainable(model)
        with pytest.raises(pc.ConfigError) as raised:  # max_steps=0 returned an empty result
            pc.train(
                model, batches(2), max_steps=steps, learning_rate=1e-3,
                gradient_accumulation_steps=accumulation,
            )  # fmt: skip
        named = "max_steps" if steps == 0 else "gradient_accumulation_steps"
        assert str(raised.value) == f"{named} must be a whole number of at least 1, got 0"
        after = trainable(model)
        assert all(torch.equal(before[name], after[name]) for name in before)

    @pytest.mark.parametrize(
        ("setting", "message"),
        [
            ({"learning_rate": "1e-3"}, "learning_rate must be a finite number above 0, got '1e-3'"),
            ({"learning_rate": 0.0}, "learning_rate must be a finite number above 0, got 0.0"),
            ({"learning_rate": float("nan")}, "learning_rate must be a finite number above 0, got nan"),
            ({"weight_decay": -0.1}, "weight_decay must be a finite number, 0 or more, got -0.1"),
            ({"warmup_ratio": 6}, "warmup_ratio must be a number from 0 to 1, got 6"),
            ({"max_grad_norm": 0}, "max_grad_norm must be a number above 0 (inf: no clipping), got 0"),
            ({"max_steps": 2.0}, "max_steps must be a whole number of at least 1, got 2.0"),
            ({"checkpoint_every": 0}, "checkpoint_every must be a whole number of at least 1, got 0"),
            ({"lr_schedule": "cosin"}, "lr_schedule must be one of linear, cosine, constant, got 'cosin'"),
            ({"precision": "fp8"}, "precision must be one of fp32, bf16, fp16, got 'fp8'"),
        ],
    )  # fmt: skip
    def test_a_setting_of_the_wrong_type_or_range_is_named_before_a_step(self, setting, message):
        """``learning_rate="1e-3"`` failed inside AdamW's comparison; a warmup_ratio of 6 (meant
        as steps) warmed up past the end of training, silently."""
        model = model_with_lora()
        before = trainable(model)
        with pytest.raises(pc.ConfigError) as raised:
            pc.train(model, batches(2), **{"max_steps": 2, "learning_rate": 1e-3, **setting})
        assert str(raised.value) == message
        after = trainable(model)
        assert all(torch.equal(before[name], after[name]) for name in before)

    def test_a_generator_of_fewer_batches_than_the_steps_is_named(self):
        """A generator is read once: its second pass is empty, which said "the data set is
        empty" of a data set that trained the first steps."""
        model = model_with_lora()
        with pytest.raises(ValueError) as raised:
            pc.train(model, (b for b in batches(2)), max_steps=3, learning_rate=1e-3)
        assert str(raised.value) == (
            "the batches ran out after 2: a generator is read once, and training asks for more "
            "(max_steps x gradient_accumulation_steps); pass a list or a DataLoader (read "
            "again for each pass), or lower max_steps"
        )
        enough = pc.train(
            model_with_lora(), (b for b in batches(2)), max_steps=2, learning_rate=1e-3
        )
        assert len(enough.losses) == 2

    def test_numpy_numbers_are_settings_like_any_other(self):
        """Computed from arrays (``len(rows) // batch``): a NumPy integer step count and a
        NumPy float learning rate train as an int and a float do."""
        plain = model_with_lora()  # seeded: each model starts, and drops out, alike
        start = trainable(plain)
        pc.train(plain, batches(2), max_steps=2, learning_rate=1e-2)
        numpy_given = model_with_lora()
        pc.train(numpy_given, batches(2), max_steps=np.int64(2), learning_rate=np.float32(1e-2))
        trained, expected = trainable(numpy_given), trainable(plain)
        assert any(not torch.equal(expected[n], start[n]) for n in expected)  # it trained
        for name, value in expected.items():
            torch.testing.assert_close(trained[name], value)

    def test_a_batch_that_is_not_a_dict_is_named(self):
        model = model_with_lora()
        before = trainable(model)
        tensors = [b["input_ids"] for b in batches(2)]
        with pytest.raises(TypeError) as raised:  # was AttributeError: 'Tensor' ... 'items'
            pc.train(model, tensors, max_steps=1, learning_rate=1e-3)
        assert str(raised.value) == (
            "each training batch is a dict of tensors such as a tokenizer returns, with labels "
            "(input_ids=..., attention_mask=..., labels=...); got a Tensor"
        )
        assert all(torch.equal(before[n], p) for n, p in trainable(model).items())

    @pytest.mark.parametrize(
        ("key", "value", "message"),
        [
            ("labels", torch.tensor([0, 1, 3, 2]),
             "batch['labels'] holds 3 (at [2]), but the model takes class ids of a classifier "
             "with 3 classes (num_labels=3): number the classes 0 to 2, or load the model with "
             "num_labels set to how many there are"),
            ("labels", torch.tensor([0, -1, 1, 2]),
             "batch['labels'] holds -1 (at [1]), but the model takes class ids of a classifier "
             "with 3 classes (num_labels=3): number the classes 0 to 2, or load the model with "
             "num_labels set to how many there are"),
            ("input_ids", torch.full((4, 9), VOCAB),
             f"batch['input_ids'] holds {VOCAB} (at [0, 0]), but the model takes token ids of "
             f"a vocabulary of {VOCAB:,}: tokenize with the base model's own tokenizer (a "
             "tokenizer given tokens of its own also needs "
             "model.resize_token_embeddings(len(tokenizer)))"),
        ],
    )  # fmt: skip
    def test_an_id_the_model_has_no_row_for_is_named_before_a_step(self, key, value, message):
        """A class id beyond the classifier's classes was torch's ``IndexError: Target 3 is
        out of bounds`` (on a GPU, a device-side assert that ends the CUDA context); a token id
        beyond the vocabulary, ``index out of range in self``."""
        model = model_with_lora()
        before = trainable(model)
        with pytest.raises(ValueError) as raised:
            pc.train(model, [{**batches(1)[0], key: value}], max_steps=1, learning_rate=1e-3)
        assert str(raised.value) == message
        assert all(torch.equal(before[n], p) for n, p in trainable(model).items())

    def test_a_language_models_labels_are_token_ids_or_the_ignored_id(self):
        import transformers as T

        model = T.AutoModelForCausalLM.from_config(TINY_CONFIGS["gpt2"]())
        pc.add_adapter(model, "a", pc.LoRA(rank=4))
        ids = torch.randint(5, 90, (2, 6), generator=torch.Generator().manual_seed(3))
        prompt_skipped = ids.clone()
        prompt_skipped[:, :3] = -100  # the loss covers the answer only: trains
        pc.train(
            model, [{"input_ids": ids, "labels": prompt_skipped}], max_steps=1, learning_rate=1e-3
        )
        beyond = ids.clone()
        beyond[1, 4] = VOCAB + 7
        with pytest.raises(ValueError) as raised:
            pc.train(model, [{"input_ids": ids, "labels": beyond}], max_steps=1, learning_rate=1e-3)
        assert str(raised.value) == (
            f"batch['labels'] holds {VOCAB + 7} (at [1, 4]), but the model takes token ids of a "
            f"vocabulary of {VOCAB:,}, or -100 for a token the loss skips"
        )

    def test_labels_of_the_wrong_shape_are_named_before_a_step(self):
        """Class ids given to a language model, or a label per token to a classifier, were
        torch's ``Expected input batch_size (12) to match target batch_size (2)``."""
        import transformers as T

        ids = torch.randint(5, 90, (2, 6), generator=torch.Generator().manual_seed(3))
        language_model = T.AutoModelForCausalLM.from_config(TINY_CONFIGS["gpt2"]())
        pc.add_adapter(language_model, "a", pc.LoRA(rank=4))
        with pytest.raises(ValueError) as raised:
            pc.train(
                language_model, [{"input_ids": ids, "labels": torch.tensor([1, 0])}],
                max_steps=1, learning_rate=1e-3,
            )  # fmt: skip
        assert str(raised.value) == (
            "batch['labels'] has shape (2,) but batch['input_ids'] (2, 6): a language model's "
            "labels are token ids, one per input token (labels = input_ids, with -100 where "
            "the loss skips a token)"
        )
        classifier = model_with_lora()
        batch = batches(1)[0]
        per_token = {**batch, "labels": torch.zeros_like(batch["input_ids"])}
        with pytest.raises(ValueError) as raised:
            pc.train(classifier, [per_token], max_steps=1, learning_rate=1e-3)
        rows = tuple(batch["input_ids"].shape)
        assert str(raised.value) == (
            f"batch['labels'] has shape {rows} but the classifier takes one class id per row: "
            f"shape {rows[:1]} for batch['input_ids'] of shape {rows}"
        )

    def test_lists_a_tokenizer_returned_train_as_tensors_do(self):
        """``tokenizer(texts, padding=True)`` without ``return_tensors`` gives lists; with
        ``labels=[1, 0, ...]`` they failed on ``'list' object has no attribute 'to'``."""
        given = batches(2)
        listed = [{k: v.tolist() for k, v in b.items()} for b in given]
        as_tensors = model_with_lora()  # seeded: each model starts, and drops out, alike
        start = trainable(as_tensors)
        pc.train(as_tensors, given, max_steps=2, learning_rate=1e-2)
        as_lists = model_with_lora()
        pc.train(as_lists, listed, max_steps=2, learning_rate=1e-2)
        expected = trainable(as_tensors)
        assert any(not torch.equal(expected[n], start[n]) for n in expected)  # it trained
        for name, value in trainable(as_lists).items():
            torch.testing.assert_close(value, expected[name])

    def test_rows_of_different_lengths_say_to_pad_them(self):
        model = model_with_lora()
        ragged = {"input_ids": [[5, 6, 7], [5, 6]], "labels": [0, 1]}
        with pytest.raises(TypeError) as raised:
            pc.train(model, [ragged], max_steps=1, learning_rate=1e-3)
        assert str(raised.value) == (
            "batch['input_ids'] is a list that is not a table of numbers (expected sequence of "
            "length 3 at dim 1 (got 2)): pad the rows to one length and return tensors, "
            "tokenizer(texts, padding=True, return_tensors='pt')"
        )

    def test_a_merged_adapter_is_refused_before_a_step(self):
        """Its forward reads the merged base weights: its own got no gradient and only its head
        learned, silently."""
        model = model_with_lora()
        pc.merge(model, "a")
        assert pc.is_merged(model, "a")
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        with pytest.raises(pc.ConfigError) as raised:
            pc.train(model, batches(2), max_steps=1, learning_rate=1e-2)
        assert str(raised.value) == (
            "adapter 'a' is merged into the base weights, so training would change weights its "
            "forward no longer reads (only its head would learn): pc.unmerge(model, 'a') first, "
            "and merge again after training"
        )
        assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
        pc.unmerge(model, "a")
        assert not pc.is_merged(model, "a")
        assert len(pc.train(model, batches(2), max_steps=1, learning_rate=1e-2).losses) == 1

    def test_an_adapter_switched_to_without_set_trainable_is_named(self):
        """set_active switches what runs, set_trainable what trains: training the adapter
        switched back to was torch's "element 0 of tensors does not require grad"."""
        model = model_with_lora()  # "a" runs and trains
        pc.add_adapter(model, "other", pc.LoRA(rank=2))  # now "other" does
        pc.set_active(model, "a")
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        with pytest.raises(pc.ConfigError) as raised:
            pc.train(model, batches(2), max_steps=1, learning_rate=1e-3)
        assert str(raised.value) == (
            "adapter 'other' trains (the last one added, or pc.set_trainable's) but is not "
            "active (active: 'a'), so it would get no gradient: pc.set_trainable(model, NAME) "
            "trains the active adapter NAME, pc.set_active(model, 'other') runs the one that "
            "trains"
        )
        pc.set_active(model, None)
        with pytest.raises(pc.ConfigError, match=r"\(active: none, the base model alone\)"):
            pc.train(model, batches(2), max_steps=1, learning_rate=1e-3)
        assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
        pc.set_active(model, "a")
        pc.set_trainable(model, "a")  # what the message says: then "a" trains
        result = pc.train(model, batches(2), max_steps=2, learning_rate=1e-2)
        assert len(result.losses) == 2
        moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
        assert moved and all(".a." in n or n.endswith(".a") for n in moved), sorted(moved)


class TestLearningRateSchedule:
    @pytest.mark.parametrize(
        ("schedule", "after_warmup"),
        [
            ("linear", lambda progress: 1 - progress),
            ("cosine", lambda progress: 0.5 * (1 + math.cos(math.pi * progress))),
            ("constant", lambda progress: 1.0),
        ],
    )
    def test_each_step_uses_the_rate_of_its_schedule_after_the_warmup(self, schedule, after_warmup):
        """10 steps, 2 of them warming up (0, then half the rate); then the schedule's shape."""
        result = pc.train(
            model_with_lora(), batches(2), max_steps=10, learning_rate=0.02, warmup_ratio=0.2,
            lr_schedule=schedule,
        )  # fmt: skip
        expected = [0.0, 0.01] + [0.02 * after_warmup((s - 2) / 8) for s in range(2, 10)]
        assert result.learning_rates == pytest.approx(expected, abs=1e-12)
        if schedule == "cosine":  # between the two others, not either of them
            assert 0.02 * (1 - 3 / 8) < result.learning_rates[5] < 0.02


class TestPeriodicEvaluation:
    def test_evaluates_every_n_steps_and_after_the_last_without_changing_the_training(self):
        plain_model = model_with_lora()
        torch.manual_seed(5)
        plain = pc.train(plain_model, batches(), **OPTIONS)
        model = model_with_lora()
        torch.manual_seed(5)
        seen, heard = [], []

        def evaluate() -> float:
            seen.append((model.training, torch.is_grad_enabled()))
            torch.rand(3)  # a collator drawing masks: must not move training's random numbers
            return float(len(seen))

        result = pc.train(model, batches(), evaluate=evaluate, evaluate_every=3,
                          on_evaluation=lambda step, loss: heard.append((step, loss)),
                          **OPTIONS)  # fmt: skip
        assert result.evaluations == [(3, 1.0), (6, 2.0), (8, 3.0)] == heard
        assert seen == [(False, False)] * 3  # eval mode, no gradients
        assert result.losses == plain.losses  # dropout drew the same numbers
        assert result.best_step is None

    def test_keep_best_ends_with_the_weights_of_the_lowest_loss(self):
        model = model_with_lora()
        at_evaluation = []
        losses = iter([3.0, 1.0, float("nan"), 2.0])

        def evaluate() -> float:
            at_evaluation.append(trainable(model))
            return next(losses)

        result = pc.train(model, batches(), evaluate=evaluate, evaluate_every=2,
                          keep_best=True, **OPTIONS)  # fmt: skip
        assert [step for step, _ in result.evaluations] == [2, 4, 6, 8]
        assert result.best_step == 4
        best = at_evaluation[1]
        head = "classifier.heads.a.weight"  # the adapter's own head: it trained on after step 4
        assert not torch.equal(at_evaluation[-1][head], best[head])
        for name, value in trainable(model).items():
            assert torch.equal(value, best[name]), name

    def test_a_resumed_run_keeps_the_best_of_the_steps_before_the_crash(self, tmp_path: Path):
        model = model_with_lora()
        losses = {2: 1.0, 4: 5.0, 6: 4.0, 8: 3.0}
        options = {**OPTIONS, "evaluate_every": 2, "keep_best": True,
                   "checkpoint_dir": tmp_path, "checkpoint_every": 2}  # fmt: skip
        kept = {}

        def evaluate_crashed() -> float:
            step = len(kept) * 2 + 2
            kept[step] = trainable(model)
            if step == 6:
                raise Crash
            return losses[step]

        with pytest.raises(Crash):
            pc.train(model, batches(), evaluate=evaluate_crashed, **options)
        resumed = model_with_lora()
        after_the_crash = iter([losses[6], losses[8]])
        result = pc.train(resumed, batches(), evaluate=lambda: next(after_the_crash), **options)
        assert result.resumed_from == 4
        assert result.evaluations == [(2, 1.0), (4, 5.0), (6, 4.0), (8, 3.0)]
        assert result.best_step == 2
        for name, value in trainable(resumed).items():
            assert torch.equal(value, kept[2][name]), name

    @pytest.mark.parametrize(
        ("settings", "message"),
        [
            ({"keep_best": True},
             "keep_best needs evaluate_every (and evaluate): nothing is evaluated"),
            ({"evaluate_every": 2}, "evaluate_every needs evaluate, a callable returning the loss"),
            ({"evaluate_every": 0, "evaluate": lambda: 0.0},
             "evaluate_every must be a whole number of at least 1, got 0"),
            ({"patience": 3}, "patience needs evaluate_every (and evaluate): nothing is evaluated"),
            ({"evaluate_every": 2, "evaluate": lambda: 0.0, "patience": 0},
             "patience must be a whole number of at least 1, got 0"),
        ],
    )  # fmt: skip
    def test_settings_that_cannot_work_are_refused_before_a_step(self, settings, message):
        model = model_with_lora()
        before = trainable(model)
        with pytest.raises(pc.ConfigError) as raised:
            pc.train(model, batches(), **OPTIONS, **settings)
        assert str(raised.value) == message
        assert all(torch.equal(value, before[name]) for name, value in trainable(model).items())


class TestEarlyStopping:
    def test_patience_stops_after_that_many_evaluations_without_a_lower_loss(self):
        losses = iter([3.0, 1.0, 2.0, 1.5, 0.5])
        result = pc.train(model_with_lora(), batches(), evaluate=lambda: next(losses),
                          evaluate_every=1, patience=2, **OPTIONS)  # fmt: skip
        assert result.evaluations == [(1, 3.0), (2, 1.0), (3, 2.0), (4, 1.5)]
        assert (result.stopped_at, len(result.losses)) == (4, 4)
        assert result.best_step is None  # nothing kept without keep_best

    def test_a_stopped_run_resumed_trains_no_more_and_keeps_its_best(self, tmp_path: Path):
        model = model_with_lora()
        kept = []

        def evaluate() -> float:
            kept.append(trainable(model))
            return [2.0, 1.0, 1.2, 1.1][len(kept) - 1]

        options = {**OPTIONS, "evaluate_every": 1, "patience": 2, "keep_best": True,
                   "checkpoint_dir": tmp_path, "checkpoint_every": 100}  # fmt: skip
        first = pc.train(model, batches(), evaluate=evaluate, **options)
        assert (first.stopped_at, first.best_step) == (4, 2)
        again = model_with_lora()
        resumed = pc.train(again, batches(), evaluate=lambda: 0.0, **options)
        assert (resumed.resumed_from, resumed.stopped_at, len(resumed.losses)) == (4, 4, 4)
        assert resumed.evaluations == first.evaluations and resumed.best_step == 2
        for name, value in trainable(again).items():
            assert torch.equal(value, kept[1][name]), name
