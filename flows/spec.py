"""The adapter spec: one YAML file that every command reads.

Validated with pydantic at the boundary; every problem is reported with its YAML path
(``method.rank: must be >= 1``) before any work starts. Method fields are checked by the
``peft_core`` configuration classes themselves, so the rules live in one place.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
import warnings
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, Union

from cronsim import CronSim, CronSimError
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

import peft_core as pc
from registry.errors import InvalidNameError
from registry.names import (
    LANGUAGE_PATTERN,
    LANGUAGE_WORDS,
    NAME_PATTERN,
    NAME_WORDS,
    base_model_name,
    check_new_alias,
    check_storable_text,
    member_name,
)

from .data_files import local_data_path
from .spec_document import (
    SpecError,
    apply_overrides,
    read_spec_document,
)

__all__ = [
    "METHOD_SPECS",
    "PROMPT_SEPARATOR",
    "AdapterSpec",
    "PlanSpec",
    "SpecError",
    "apply_overrides",
    "joined_prompt",
    "load_plan_spec",
    "load_spec",
    "member_name",
    "parse_spec",
    "shared_names",
    "spec_of_version",
]

# what each pattern asks for, in words (pydantic's message quotes the regular expression)
_PATTERN_WORDS = {NAME_PATTERN: NAME_WORDS, LANGUAGE_PATTERN: LANGUAGE_WORDS}


class _Strict(BaseModel):
    # No NaN or infinity anywhere in a spec: an infinite learning rate trains a broken adapter.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class HeadSpec(_Strict):
    """The task head: a new classifier, or the model's pre-trained LM head."""

    type: Literal["classification", "masked-lm", "causal-lm"]
    num_labels: int | None = Field(default=None, ge=2, le=100_000)
    # label_names[i] names label i (predict says "positive", not "label 1")
    label_names: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, min_length=2, max_length=100_000
    )

    @model_validator(mode="before")
    @classmethod
    def _type_alone(cls, data: Any) -> Any:
        return {"type": data} if isinstance(data, str) else data  # head: causal-lm

    @model_validator(mode="before")
    @classmethod
    def _count_named_labels(cls, data: Any) -> Any:
        names = data.get("label_names") if isinstance(data, dict) else None
        if isinstance(names, list) and data.get("num_labels") is None:
            return {**data, "num_labels": len(names)}  # naming the labels is enough
        return data

    @model_validator(mode="after")
    def _labels_for_classification(self) -> HeadSpec:
        if self.type == "classification" and self.num_labels is None:
            raise ValueError("a classification head needs num_labels (>= 2) or label_names")
        if self.type != "classification" and (self.num_labels, self.label_names) != (None, None):
            raise ValueError(
                f"num_labels and label_names apply to classification heads, not {self.type}"
            )
        if self.label_names is not None:
            if len(self.label_names) != self.num_labels:
                raise ValueError(
                    f"label_names has {len(self.label_names)} names for {self.num_labels} labels: "
                    "give one name per label, label 0 first"
                )
            if len(set(self.label_names)) != len(self.label_names):
                raise ValueError("label_names must differ from each other")
        return self


class _MethodSpec(_Strict):
    if TYPE_CHECKING:  # each method's model declares it, as a Literal of its own name
        type: str

    def to_config(self) -> pc.MethodConfig:
        """The peft_core configuration this spec describes."""
        return pc.config_from_dict(self.model_dump())

    @model_validator(mode="after")
    def _valid_for_peft_core(self) -> _MethodSpec:
        try:
            self.to_config()
        except pc.ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self


class FusionSpec(_MethodSpec):
    """AdapterFusion over registered bottleneck adapters: ``members`` are registry references
    (``name``, ``name@3``, ``name@champion``), loaded frozen before the fusion trains."""

    type: Literal["fusion"]
    members: list[str] = Field(min_length=1)
    temperature: float = 1.0

    def to_config(self) -> pc.MethodConfig:
        """The peft_core Fusion over the members' adapter names."""
        return pc.Fusion(
            members=tuple(member_name(ref) for ref in self.members), temperature=self.temperature
        )


def _spec_model(method: pc.Method) -> type[_MethodSpec]:
    """A spec model with the fields and defaults of ``method``'s configuration dataclass.

    Derived, not copied: a method's defaults live in its peft_core configuration only. Tuples
    are written as YAML lists.
    """
    config_class = method.config_class
    hints = typing.get_type_hints(config_class)
    fields: dict[str, Any] = {"type": (Literal[method.type], ...)}
    for field in dataclasses.fields(config_class):
        if not field.init:
            continue
        default = field.default if field.default is not dataclasses.MISSING else ...
        if isinstance(default, tuple):
            default = list(default)
        fields[field.name] = (_as_yaml_type(hints[field.name]), default)
    model = create_model(
        f"{config_class.__name__}Spec",
        __base__=_MethodSpec,
        __doc__=(config_class.__doc__ or "").strip().split("\n")[0],
        **fields,
    )
    return model


def _as_yaml_type(hint: Any) -> Any:
    """``tuple[str, ...]`` (frozen configs) -> ``list[str]`` (what a YAML file holds)."""
    if typing.get_origin(hint) is tuple:
        return list[typing.get_args(hint)[0]]  # type: ignore[misc]
    args = typing.get_args(hint)
    if type(None) in args and len(args) == 2:
        inner = next(a for a in args if a is not type(None))
        return _as_yaml_type(inner) | None
    return hint


# Specs whose fields differ from the configuration's: a fusion names registry references.
_HANDWRITTEN: dict[str, type[_MethodSpec]] = {"fusion": FusionSpec}
METHOD_SPECS: dict[str, type[_MethodSpec]] = {
    kind: _HANDWRITTEN.get(kind) or _spec_model(method) for kind, method in pc.all_methods().items()
}
# Module attributes under their own names, so pickling (Prefect hashes task inputs) finds them.
globals().update({model.__name__: model for model in METHOD_SPECS.values()})
if TYPE_CHECKING:  # one of the methods' models, chosen by its ``type``
    MethodSpec: TypeAlias = _MethodSpec
else:
    MethodSpec = Annotated[
        Union[tuple(METHOD_SPECS.values())],  # noqa: UP007 - built at run time
        Field(discriminator="type"),
    ]


PROMPT_SEPARATOR = "\n\n"  # between the values of several prompt columns


def joined_prompt(values: Sequence[Any]) -> str:
    """One prompt from the values of a row's prompt columns: one column's value as it is;
    several columns' non-empty values with a blank line between (Alpaca's instruction, then
    its input when it has one)."""
    if len(values) == 1:
        return str(values[0])
    return PROMPT_SEPARATOR.join(str(v) for v in values if v is not None and str(v).strip())


# what the data section's fields that are not a column name take (said when one is blank)
_DATA_FIELD_TAKES = {
    "train": "a file", "validation": "a file", "dataset": "a datasets id or folder",
    "subset": "a subset's name", "train_split": "a split's name",
    "validation_split": "a split's name",
}  # fmt: skip


class DataSpec(_Strict):
    """Where the examples are and which columns hold text and labels.

    Either local files (``train``, optional ``validation``: TSV, CSV, JSON lines or Parquet) or a
    Hugging Face datasets id / local dataset folder (``dataset``, optional ``subset``, and split
    names). Without a validation split, 10% of train is held out (seeded).
    """

    train: str | None = None
    validation: str | None = None
    dataset: str | None = None
    subset: str | None = None
    train_split: str = "train"
    validation_split: str | None = "validation"
    text: str = "sentence"
    text_pair: str | None = None
    label: str | None = "label"
    # Instruction data for causal LMs: a prompt and a response column, or a column of chat
    # messages ([{role, content}, ...], the last one the assistant's; ShareGPT's {from, value}
    # turns are read as those roles). Loss on the response only. The prompt may be several
    # columns, joined by a blank line, empty ones left out: Alpaca's [instruction, input].
    prompt: str | list[str] | None = None  # names checked by _prompt_columns_named
    response: str | None = None
    messages: str | None = None
    max_train_samples: int | None = Field(default=None, ge=1)
    max_eval_samples: int | None = Field(default=None, ge=1)

    @field_validator(
        "train", "validation", "dataset", "subset", "train_split", "validation_split", "text",
        "text_pair", "label", "response", "messages", mode="before",
    )  # fmt: skip
    @classmethod
    def _not_blank(cls, value: Any, info: ValidationInfo) -> Any:
        """A blank name (an unset variable, ``label: ''``) is said here: ``text: ''`` ended in
        a KeyError, ``label: ''`` trained a classifier with no labels, ``train: ''`` read the
        spec's folder, ``text_pair: ''`` was taken for none."""
        if not (isinstance(value, str) and not value.strip()):
            return value
        name = info.field_name or ""
        optional = cls.may_be_none(name)
        wanted = _DATA_FIELD_TAKES.get(name, "a column's name")
        raise ValueError(f"empty: give {wanted}{', or null for none' if optional else ''}")

    @classmethod
    def may_be_none(cls, name: str) -> bool:
        """Whether data field ``name`` may be left out (``null``): ``text_pair`` may, ``text``
        may not. False for a name that is no field."""
        field = cls.model_fields.get(name)
        return field is not None and type(None) in typing.get_args(field.annotation)

    @property
    def instructions(self) -> bool:
        """Whether the examples are instructions (prompt/response or chat messages)."""
        return self.messages is not None or self.prompt is not None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_columns_named(cls, value: Any) -> Any:
        one = isinstance(value, str) and value.strip()
        several = isinstance(value, list) and value
        if value is None or one or (several and all(isinstance(c, str) and c for c in value)):
            return value
        raise ValueError(
            "give a column's name, or a list of column names joined into the prompt "
            f"(Alpaca's: [instruction, input]); got {value!r:.60}"
        )

    @property
    def prompt_columns(self) -> list[str]:
        """The columns a prompt is made of, in order (none without ``prompt``)."""
        if self.prompt is None:
            return []
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def prompt_text(self, row: Mapping[str, Any]) -> str:
        """``row``'s prompt: its prompt columns' values, joined as :func:`joined_prompt` does."""
        return joined_prompt([row[column] for column in self.prompt_columns])

    @model_validator(mode="after")
    def _instruction_columns(self) -> DataSpec:
        if (self.prompt is None) != (self.response is None):
            raise ValueError("give data.prompt and data.response together (the two columns)")
        if self.messages is not None and self.prompt is not None:
            raise ValueError("give data.messages or data.prompt/response, not both")
        return self

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.train is None) == (self.dataset is None):
            raise ValueError(
                "give either data.train (a local file) or data.dataset (a datasets id or folder)"
            )
        if self.dataset is not None and self.validation is not None:
            raise ValueError("data.validation is a file; with data.dataset use validation_split")
        return self


class TrainSpec(_Strict):
    # Upper bounds are far above any real run and refuse values that would exhaust the machine.
    epochs: float = Field(default=1.0, gt=0, le=10_000)
    max_steps: int | None = Field(default=None, ge=1, le=100_000_000)
    batch_size: int = Field(default=32, ge=1, le=65_536)
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=65_536)
    learning_rate: float = Field(default=5e-4, gt=0, le=10)
    weight_decay: float = Field(default=0.0, ge=0, le=10)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    # After the warm-up the learning rate falls to 0 in a line, along half a cosine (common
    # for LLM fine-tuning), or stays where it is.
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_length: int = Field(default=128, ge=8, le=1_048_576)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    # auto: fp16 (with loss scaling) on an fp16 base, else bf16 autocast on a CUDA GPU that
    # supports it, else fp32. fp16 scales the loss so small gradients survive float16.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    checkpoint_every: int = Field(default=50, ge=1, le=100_000_000)
    # The validation loss after every N optimiser steps and the last (MLflow's val_loss, the
    # loss curve, report.json), so a run that overfits shows where; keep_best ends with the
    # weights of the lowest (the adapter then saved and evaluated). Under torchrun each
    # process scores its share of the validation rows.
    eval_every: int | None = Field(default=None, ge=1, le=100_000_000)
    # Each of those evaluations scores this many rows of the validation split (a sample drawn
    # once with train.seed), not all of it: frequent evaluation of a big split stays cheap.
    # The evaluation after training (and the promotion gate) still scores the whole split.
    eval_rows: int | None = Field(default=None, ge=1, le=100_000_000)
    keep_best: bool = False
    # Stop once this many evaluations in a row found no lower validation loss (early stopping).
    patience: int | None = Field(default=None, ge=1, le=100_000_000)
    # Recompute each block's activations in the backward pass: less memory, same gradients.
    gradient_checkpointing: bool = False
    # Under torchrun: ddp (every process holds the whole model) or fsdp (FSDP2: each holds 1/N
    # of every weight, for bases beyond one GPU). One process ignores it.
    sharding: Literal["ddp", "fsdp"] = "ddp"
    # More than 1: train, build and retrain start torchrun with this many processes themselves
    # (one GPU each, or gloo on a CPU); they evaluate (a share of the rows each), and
    # registration stays in the first process.
    processes: int = Field(default=1, ge=1, le=1024)
    # causal-lm: each batch's examples are laid end to end in one row, no padding; position ids
    # restart per example, so attention stays inside it and the loss is the padded batch's.
    packing: bool = False

    @model_validator(mode="after")
    def _evaluation_during_training(self) -> TrainSpec:
        if self.keep_best and self.eval_every is None:
            raise ValueError(
                "train.keep_best keeps the weights of the lowest validation loss, which "
                "train.eval_every measures: set it too (e.g. eval_every: 100)"
            )
        if self.patience is not None and self.eval_every is None:
            raise ValueError(
                "train.patience counts evaluations without a lower validation loss, which "
                "train.eval_every makes: set it too (e.g. eval_every: 100)"
            )
        if self.eval_rows is not None and self.eval_every is None:
            raise ValueError(
                "train.eval_rows is how many validation rows each evaluation during training "
                "scores, which train.eval_every asks for: set it too (e.g. eval_every: 100)"
            )
        return self


_DTYPE_NAMES = {
    "bfloat16": "bf16",
    "bf16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "fp16": "fp16",
    "float32": "fp32",
    "float": "fp32",
    "fp32": "fp32",
    "auto": "auto",
}


class LoadSpec(_Strict):
    """How the base model's weights are loaded (for training, evaluation and predict alike)."""

    # auto: bf16 on a CUDA GPU that supports it, fp32 on a CPU. A bf16/fp16 base halves the
    # memory of its weights; the adapter's own weights stay float32 either way.
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    # nf4: the body's Linear weights in 4-bit NormalFloat (QLoRA; needs adapterops[gpu]). The
    # adapter trains in float32 on top and can be merged only on an unquantised base.
    # int8: weight-only, one scale per output channel (half of bf16's memory, closer to it).
    quantization: Literal["none", "nf4", "int8"] = "none"
    # The attention kernel transformers runs (auto: its default, sdpa). flash_attention_2/3
    # (the flash-attn package, CUDA) run packed rows through the variable-length kernel instead
    # of building a mask; flex_attention has no backward on a CPU in torch, so it trains on CUDA.
    attention: Literal[
        "auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"
    ] = "auto"
    # Evaluation and predict load the whole base: on one GPU when it fits, else spread over
    # the GPUs. offload: true lets what no GPU holds stay in CPU memory, then on disk (slow).
    offload: bool = False

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_as_torch_names_it(cls, value: Any) -> Any:
        # torch's and transformers' names (torch_dtype: bfloat16) are the same dtypes
        if isinstance(value, str):
            return _DTYPE_NAMES.get(value.strip().lower().removeprefix("torch."), value)
        return value

    @field_validator("quantization", mode="before")
    @classmethod
    def _quantization_in_other_words(cls, value: Any) -> Any:
        plain = (
            value.strip().lower().replace("-", "").replace("_", "")
            if isinstance(value, str)
            else ""
        )
        if plain in ("4bit", "int4", "fp4", "bnb4bit", "loadin4bit", "qlora"):
            raise ValueError(
                f"4-bit is written nf4 (QLoRA's 4-bit NormalFloat, through torchao), got {value!r}"
            )
        if plain in ("8bit", "bnb8bit", "loadin8bit"):
            raise ValueError(f"8-bit is written int8 (weight-only, per channel), got {value!r}")
        return value.strip().lower() if isinstance(value, str) else value

    def attn_implementation(self) -> str | None:
        """What to pass transformers as ``attn_implementation`` (None: its own choice)."""
        return None if self.attention == "auto" else self.attention

    def torch_dtype(self) -> Any:
        """The dtype the base model is loaded in here (``auto`` resolved on this machine)."""
        import torch  # noqa: PLC0415 - the spec module is imported where torch is not wanted

        if self.dtype == "auto":
            gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            return torch.bfloat16 if gpu_bf16 else torch.float32
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.dtype]


class EvaluateSpec(_Strict):
    # Left out, the metric follows the head: accuracy for a classifier, perplexity for an LM.
    # exact_match (instruction data): greedy generation must reproduce each response.
    metric: Literal["accuracy", "macro_f1", "perplexity", "exact_match"] = "accuracy"


class PromoteSpec(_Strict):
    alias: str = "champion"
    min_delta: float = Field(default=0.0, ge=-1e6, le=1e6)
    # a new champion re-evaluates the compositions over its old version (flows.cascade)
    cascade: bool = True

    @field_validator("alias")
    @classmethod
    def _registry_alias(cls, value: str) -> str:
        # The registry's own rule, checked now: not after a version was registered and mirrored.
        try:
            return check_new_alias(value)
        except InvalidNameError as exc:
            raise ValueError(str(exc)) from None


# cron's shorthands, as the five fields they stand for (retrain's CronSim reads only fields)
_CRON_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}


class ScheduleSpec(_Strict):
    cron: str | None = None

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str | None) -> str | None:
        if value is None:
            return value
        value = _CRON_MACROS.get(value.strip().lower(), value)  # Prefect reads them too
        if len(value.split()) != 5:
            raise ValueError(
                f"cron must have 5 fields (minute hour day month weekday) or be one of "
                f"{', '.join(_CRON_MACROS)}, got {value!r}"
            )
        try:  # what retrain reads it with: a bad field failed there, at the scheduled run
            CronSim(value, datetime(2026, 1, 1))
        except CronSimError as exc:
            raise ValueError(
                f"cron {value!r}: {str(exc).lower()} (minute 0-59, hour 0-23, day of month "
                "1-31 on a day the month has, month 1-12, weekday 0-7 or mon-sun)"
            ) from None
        return value


def _named_base(value: str) -> str:
    """A spec's base model, named as the registry names it (:func:`base_model_name`); a blank
    one (an unset variable) was read as the folder ``.``, "not a model"."""
    if not value.strip():
        raise ValueError("empty: give a Hugging Face model id or a folder with its config.json")
    check_storable_text(value, "base model", one_line=True)  # refused at registering, too late
    return base_model_name(value)


# A base model folder written with a trailing "/" (a shell's completion) is the folder without
# it: one name in the registry, whichever way the spec spells it.
BaseModelName = Annotated[str, AfterValidator(_named_base)]
# text the registry stores as given: refused here, not after training (a NUL, a lone surrogate)
StoredText = Annotated[str, AfterValidator(lambda text: check_storable_text(text, "text"))]


class AdapterSpec(_Strict):
    """Everything needed to build, evaluate, register and promote one adapter."""

    name: str = Field(pattern=NAME_PATTERN)
    base_model: BaseModelName
    task: str = Field(pattern=NAME_PATTERN)
    language: str = Field(pattern=LANGUAGE_PATTERN)
    description: StoredText = ""
    head: HeadSpec
    method: MethodSpec
    data: DataSpec
    load: LoadSpec = LoadSpec()
    train: TrainSpec = TrainSpec()
    evaluate: EvaluateSpec = EvaluateSpec()
    promote: PromoteSpec = PromoteSpec()
    schedule: ScheduleSpec = ScheduleSpec()

    @property
    def binding(self) -> dict[str, str]:
        """What the registry binds the adapter's name to: base model, task, language and
        method (``Registry.check_binding(spec.name, **spec.binding)``)."""
        return {
            "base_model": self.base_model, "task": self.task, "language": self.language,
            "method": self.method.type,
        }  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _method_type_in_any_case(cls, data: Any) -> Any:
        """``type: LoRA`` (peft writes LORA, papers LoRA) is ``lora``: one spelling is stored."""
        method = data.get("method") if isinstance(data, dict) else None
        kind = method.get("type") if isinstance(method, dict) else None
        if isinstance(kind, str) and kind.lower() in METHOD_SPECS and kind not in METHOD_SPECS:
            return {**data, "method": {**method, "type": kind.lower()}}  # type: ignore[dict-item]
        return data

    @model_validator(mode="before")
    @classmethod
    def _metric_follows_head(cls, data: Any) -> Any:
        """A spec that names no metric gets the one its head has: perplexity for LM heads."""
        head = data.get("head") if isinstance(data, dict) else None
        kind = head.get("type") if isinstance(head, dict) else head  # or head: causal-lm
        if not isinstance(kind, str):
            return data
        evaluate = data.get("evaluate", {})
        if not isinstance(evaluate, dict) or "metric" in evaluate:
            return data
        lm = kind in ("masked-lm", "causal-lm")
        return {**data, "evaluate": {**evaluate, "metric": "perplexity" if lm else "accuracy"}}

    @model_validator(mode="after")
    def _metric_fits_head(self) -> AdapterSpec:
        lm = self.head.type != "classification"
        if lm != (self.evaluate.metric in ("perplexity", "exact_match")):
            raise ValueError(
                f"evaluate.metric {self.evaluate.metric!r} does not fit a {self.head.type} head "
                "(classification: accuracy or macro_f1; language models: perplexity, or "
                "exact_match for instruction data)"
            )
        if self.evaluate.metric == "exact_match" and not self.data.instructions:
            raise ValueError(
                "evaluate.metric exact_match generates responses: it needs instruction data "
                "(data.prompt/response or data.messages) for a causal-lm head"
            )
        if not lm and self.data.label is None:
            raise ValueError("a classification head needs data.label (the label column)")
        if self.train.packing and self.head.type != "causal-lm":
            raise ValueError(
                f"train.packing lays causal-lm examples end to end; a {self.head.type} head "
                "trains on padded batches (remove train.packing)"
            )
        if self.data.instructions and self.head.type != "causal-lm":
            raise ValueError(
                "data.prompt/response and data.messages are instruction data for a causal-lm "
                f"head, not {self.head.type}"
            )
        self._prompts_fit_training()
        fp16 = self.train.precision == "fp16" or (
            self.train.precision == "auto" and self.load.dtype == "fp16"
        )
        if self.load.quantization == "int8" and self.train.sharding == "fsdp":
            raise ValueError(
                "load.quantization int8 cannot be sharded by FSDP2 (torchao's int8 weights do "
                "not split across processes): use nf4, or train.sharding: ddp"
            )
        if fp16 and self.train.sharding == "fsdp":
            raise ValueError(
                "train.sharding fsdp trains in bf16 or fp32: fp16 loss scaling is not done for "
                "sharded models (set train.precision: bf16, or load.dtype: bf16)"
            )
        return self

    def _prompts_fit_training(self) -> None:
        """peft's prompt methods go in front of a row: not in front of each packed example, and
        (prefix tuning, through the key-value cache) not through gradient checkpointing."""
        config = getattr(self.method, "config", None) if self.method.type == "peft" else None
        kind = str(config.get("peft_type", "")).upper() if isinstance(config, dict) else ""
        if kind not in ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"):
            return
        if self.train.packing:
            raise ValueError(
                f"train.packing lays several examples in one row, and a {kind} adapter's "
                "virtual tokens would come before the first of them only: remove train.packing"
            )
        if kind == "PREFIX_TUNING" and self.train.gradient_checkpointing:
            raise ValueError(
                "PREFIX_TUNING reaches the model through its key-value cache, which gradient "
                "checkpointing drops: remove train.gradient_checkpointing"
            )


def spec_of_version(version: Any, command: str, *, instead: str = "") -> AdapterSpec:
    """The spec a registered version was built from; versions pushed without one cannot tell
    the data they read and how they are scored, so ``command`` cannot use them (predict and
    export can: :func:`flows.files_spec.serving_spec`); ``instead``: another way, for the
    message."""
    if not version.spec:
        raise SpecError(
            version.ref,
            [
                (
                    "(spec)",
                    "pushed without a spec, so the settings it was trained with (data columns, "
                    "metric, load settings) are unknown; "
                    f"{command} works on versions built by adapterops build or pushed with "
                    f"--spec SPEC (the spec it was trained with: adapterops rm {version.ref}, "
                    f"then push the folder again with it){f'; {instead}' if instead else ''}",
                )
            ],
        )
    return parse_spec(_blank_as_none(version.spec), source=f"{version.ref} spec")


def _blank_as_none(stored: dict[str, Any]) -> dict[str, Any]:
    """A spec stored before blank data fields were refused, read as its build read it: a blank
    field that may be none (``text_pair: ''``, which training took for none) is none; a
    blank one that may not stays refused (no build got past it)."""
    data = stored.get("data")
    if not isinstance(data, dict):
        return stored
    read = {
        key: None
        if isinstance(value, str) and not value.strip() and DataSpec.may_be_none(key)
        else value
        for key, value in data.items()
    }
    return {**stored, "data": read}


class PlanSpec(_Strict):
    """The part of a spec ``plan`` needs; other sections may be there and are not checked."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    name: str = Field(default="adapter", pattern=NAME_PATTERN)
    base_model: BaseModelName
    head: HeadSpec
    method: MethodSpec
    load: LoadSpec = LoadSpec()
    train: TrainSpec = TrainSpec()  # batch and length for the step's memory estimate


def parse_spec(data: Any, *, source: str = "<spec>", base_dir: Path | None = None) -> AdapterSpec:
    """Validate a parsed YAML document; data paths become relative to ``base_dir``."""
    if not isinstance(data, dict):
        raise SpecError(source, [("(top)", "the spec must be a mapping of fields")])
    try:
        spec = AdapterSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, _problems(exc)) from None
    if base_dir is None:
        return spec
    return spec.model_copy(update={"data": _resolve_paths(spec.data, base_dir)})


def shared_names(specs: Iterable[tuple[str | Path, AdapterSpec]]) -> dict[str, str]:
    """The spec files among ``specs`` (path, spec) that name the same adapter as another, each
    with the line that says so (about the field ``name``). Two such files build one adapter in
    turn: each retraining finds the newest version made from the other file's spec, so builds
    from both, one version each, and moves the champion back and forth."""
    by_name: dict[str, list[str]] = {}
    for path, spec in specs:
        by_name.setdefault(spec.name, []).append(str(path))
    return {
        path: (
            f"adapter {name!r} is built by {', '.join(p for p in paths if p != path)} too: "
            "each run would build it from each spec in turn (a version apiece, its champion "
            "moving back and forth); give each spec a name of its own"
        )
        for name, paths in by_name.items()
        if len(paths) > 1
        for path in paths
    }


def load_spec(path: str | Path, overrides: list[str] | None = None) -> AdapterSpec:
    """Read, override (``key.sub=value``) and validate a spec file."""
    file = Path(path)
    data = read_spec_document(file, overrides)
    spec = parse_spec(data, source=str(file), base_dir=file.resolve().parent)
    _check_base_found_here(spec.base_model, file)
    return spec


def load_plan_spec(path: str | Path, overrides: list[str] | None = None) -> AdapterSpec | PlanSpec:
    """What ``plan`` reads: a whole spec, or one that only has its base model, head and method
    (a method is costed before any data exists). A spec with a data section is checked whole."""
    file = Path(path)
    data = read_spec_document(file, overrides)
    if isinstance(data, dict) and "data" not in data:
        try:
            plan = PlanSpec.model_validate(data)
        except ValidationError as exc:
            raise SpecError(str(file), _problems(exc)) from None
        _check_base_found_here(plan.base_model, file)
        return plan
    spec = parse_spec(data, source=str(file), base_dir=file.resolve().parent)
    _check_base_found_here(spec.base_model, file)
    return spec


def _check_base_found_here(base_model: str, file: Path) -> None:
    """A relative ``base_model`` folder is read from the current folder (it is the name the
    registry knows the base by), where data paths are read from the spec's: one the current
    folder lacks but the spec's folder holds is the spec run from elsewhere (a build started
    from the repository root, a deployment's worker), said as such instead of "unknown base
    model"."""
    written = Path(base_model).expanduser()
    beside = file.resolve().parent / written
    if written.is_absolute() or written.is_dir() or not beside.is_dir():
        return
    from .models import BaseModelNotFound, resolve_base_model  # noqa: PLC0415

    try:
        resolve_base_model(base_model)  # a Hub name in the cache, a packaged model: as it is
    except BaseModelNotFound:
        raise SpecError(
            str(file),
            [
                (
                    "base_model",
                    f"{base_model!r} is read from the current folder ({Path.cwd()}), which has no "
                    f"such folder; the spec's folder has it: write its absolute path, "
                    f"{beside.resolve()}, or run from {file.resolve().parent} (data paths are "
                    "read from the spec's folder, base_model from the current one)",
                )
            ],
        ) from None


def warn_of_a_relative_base(spec: AdapterSpec) -> None:
    """Warn (:func:`~flows.models.relative_base_note`) where ``spec``'s base is a relative
    folder."""
    from .models import relative_base_note  # noqa: PLC0415 - as _check_base_found_here

    note = relative_base_note(spec.name, spec.base_model)
    if note is not None:
        warnings.warn(note, RuntimeWarning, stacklevel=2)


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    """One (field, message) per problem; peft's fields written beside ``type: peft`` instead
    of under its ``config`` are one problem that says where they go (not "config: Field
    required" and "unknown field (check the spelling)" for each)."""
    errors = exc.errors()

    def beside_peft(error: Any) -> bool:
        return tuple(error["loc"][:2]) == ("method", "peft") and error["type"] in (
            "extra_forbidden",
            "missing",  # config itself
        )

    beside = [str(e["loc"][2]) for e in errors if beside_peft(e) and e["type"] != "missing"]
    if not beside:
        return [_problem(error) for error in errors]
    example = ", ".join(f"{field}: ..." for field in beside[:3])
    nested = (
        f"peft's own fields ({', '.join(beside)}) go under config: write method: {{type: "
        f"peft, config: {{{example}}}}}"
    )
    return [("method", nested), *(_problem(e) for e in errors if not beside_peft(e))]


def _problem(error: Any) -> tuple[str, str]:
    # Discriminated unions put the tag in the location ("method.lora.rank"): drop it.
    location = [_field_name(p) for p in error["loc"] if p not in METHOD_SPECS]
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = _unknown_field(error["loc"])
    if error["type"] == "union_tag_invalid" and location[-1:] == ["method"]:
        message = _unknown_method(str(error["ctx"]["tag"]))
    given = error.get("input")
    if error["type"] == "string_pattern_mismatch":
        pattern = str(error.get("ctx", {}).get("pattern"))
        message = f"{_PATTERN_WORDS.get(pattern, message)}, got {given!r}"
    if error["type"] in ("list_type", "tuple_type") and isinstance(given, str):
        items = ", ".join(part.strip() for part in given.split(","))
        message += f"; a list is written [{items}] (in --set too)"
    return ".".join(location) or "(top)", message


def _unknown_field(location: tuple[Any, ...]) -> str:
    """An unknown field, with the known one of its section it is closest to when there is
    one (``train.eval_evry``: did you mean eval_every?)."""
    section: Any = AdapterSpec
    for part in location[:-1]:  # down the nested sections; a method's tag names its own
        field = getattr(section, "model_fields", {}).get(part)
        section = METHOD_SPECS.get(part) if field is None else field.annotation
    known = list(getattr(section, "model_fields", {}))
    close = difflib.get_close_matches(str(location[-1]), known, n=1, cutoff=0.75)
    return (
        f"unknown field: did you mean {close[0]}?"
        if close
        else "unknown field (check the spelling)"
    )


def _unknown_method(tag: str) -> str:
    """What an unknown ``method.type`` should have been: QLoRA and peft's own methods are
    spelled differently here; otherwise the closest name."""
    plain = tag.lower().replace("-", "").replace("_", "")
    if plain == "qlora":
        return (
            "QLoRA is written method: {type: lora, ...} with load: {quantization: nf4} "
            "(a 4-bit base, a float32 LoRA)"
        )
    from peft import PeftType  # noqa: PLC0415 - only on this error

    peft_names = {t.value.lower().replace("_", ""): t.value for t in PeftType}
    if plain in peft_names and plain not in METHOD_SPECS:
        return (
            f"{tag!r} is one of peft's methods: write method: {{type: peft, config: "
            f"{{peft_type: {peft_names[plain]}, ...}}}} (peft's own configuration fields)"
        )
    close = difflib.get_close_matches(tag.lower(), METHOD_SPECS, n=1)
    guess = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"unknown method type {tag!r}: {guess}one of {', '.join(METHOD_SPECS)} "
        "(`adapterops methods` says what each can do)"
    )


def _field_name(part: Any) -> str:
    """A field as written, quoted when it is empty or holds spaces, dots or control characters
    (a field named "\n" must not break the one-line error)."""
    text = str(part)
    plain = text and text.isprintable() and not any(c in text for c in " .:;")
    return text if plain else repr(text)


def _resolve_paths(data: DataSpec, base_dir: Path) -> DataSpec:
    """Relative file paths are relative to the spec file; dataset ids are left as they are."""

    def resolve(value: str | None) -> str | None:
        local = local_data_path(value, base_dir) if value is not None else None
        return str(local) if local is not None else value

    def resolve_folder(value: str | None) -> str | None:
        local = base_dir / value if value is not None else None
        return str(local.resolve()) if local is not None and local.is_dir() else value

    update = {
        "train": resolve(data.train),
        "validation": resolve(data.validation),
        "dataset": resolve_folder(data.dataset),
    }
    return data.model_copy(update=update)
