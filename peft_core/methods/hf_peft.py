"""Any Hugging Face peft method, run by peft itself: ``AnyPeft({"peft_type": "LOHA", ...})``.

Native methods (LoRA, DoRA, IA3, bottlenecks, ...) build one module per ``AdaptedLayer``. peft has
dozens more (LoHa, LoKr, OFT, BOFT, AdaLoRA, HRA, FourierFT, prompt tuning, ...); instead of
re-implementing each, this method lets peft place its own layers in the model and keeps only the
lifecycle around them: a record, activation, training, saving in the PEFT layout (so peft, vLLM
and LoRAX read the files), loading back.

Two families:

- **tuners** (peft's in-place layers): a ``peft.PeftModel`` is made around the model, which puts
  peft's layers into the model itself (each target becomes peft's layer around the original), and
  is kept beside it (``model.peft_core_peft_models``) so peft's own save, load and training
  hooks apply: AdaLoRA trains through its tuner (orthogonal regulariser) and re-allocates its rank
  budget after every optimiser step, and its files carry the pruned ranks. Methods whose layers
  share state (VeRA's projections, VB-LoRA's vector bank, RandLoRA's bases, FRoD...) keep every
  adapter of the kind on the first one's tuner (peft's ``add_adapter``), as peft does; that state
  is saved under the tuner's keys (``base_model.vera_A``). Our fingerprint sees through peft's
  layers.
- **prompt learning**, by a forward pre-hook on the model, as ``PeftModel`` does: ``PROMPT_TUNING``
  and ``P_TUNING`` prepend learned virtual tokens to the input embeddings (token types and token
  labels widened to match); ``PREFIX_TUNING`` puts learned keys and values for every layer at the
  front of the key-value cache (decoder models, whose forward takes a cache). Either way the
  attention mask is widened, and a generation step whose cache already holds them adds nothing
  again. The prompts live in ``model.peft_core_prompts``.

Tuner adapters merge and unmerge as native ones do (peft computes the merged weights; unmerge
restores them bit for bit: :mod:`._peft_merge`); prompt adapters have no weights to merge. peft
adapters do not run per row (``Parallel``), combine (``combine_adapters``) or join a fusion; each
is refused with a clear error. The classification head is ours (``HeadSwitch``), so
``modules_to_save`` is refused.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import warnings
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import torch
from torch import Tensor, nn

from ..errors import ConfigError, TargetError
from ..layer import SELF_PLACED_CONTAINER, AdaptedLayer
from ..offload import is_offloaded, offloaded_weight_message
from . import _peft_merge
from .base import Method, MethodConfig, PeftImport

if TYPE_CHECKING:
    from ..roles import Target
    from ..state import AdapterRecord

__all__ = ["METHOD", "AnyPeft", "PeftRun", "base_rewriting_init", "portable_config", "tuner_layers"]

PROMPTS = SELF_PLACED_CONTAINER  # the ModuleDict of prompt encoders on the model
_HOOK = "peft_core_prompt_hook"
_AFTER_HOOK = "peft_core_prompt_after_hook"
# set while a forward runs on a cache made only to carry a prefix
_UNWANTED_CACHE = "peft_core_unwanted_cache"
_WRAPPERS = "peft_core_peft_models"
_WRAPPED_PREFIX = "base_model.model."  # a PeftModel's keys for the model's own modules
_TUNER_PREFIX = "base_model."  # ... and, without ``model.``, for its tuner's shared state
_PROMPTS_ON = "peft_core_prompts_on"
_SWITCHED_ON = "peft_core_peft_on"  # the adapters the last switch turned on
_PROMPT_TYPES = ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING")
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
_MAX_CONFIG_BYTES = 65_536  # a peft config is a few hundred bytes; a hostile one could be megabytes
_HEAD_MODULES = {"classifier", "score", "lm_head", "cls", "pre_classifier"}
# Fields this pipeline owns: the head (ours), and the fields peft fills in for files.
_REFUSED_TYPES = {
    "POLY": "routes each example by a task id passed to every forward (task_ids=...), which "
    "adapterops does not pass: train one adapter per task instead",
}
# peft keeps these methods' state on the tuner too (RandLoRA's random bases), without the flag
_SHARED_BUT_UNFLAGGED = {"RANDLORA"}
_REFUSED_FIELDS = {
    "modules_to_save": "the head is trained by adapterops (the spec's head); leave it out",
}


@dataclass(frozen=True)
class AnyPeft(MethodConfig):
    """Any Hugging Face peft method: ``config`` is a peft configuration as a dict with its
    ``peft_type`` (``{"peft_type": "LOHA", "r": 8, "target_modules": ["query", "value"]}``)."""

    config: dict[str, Any]
    type: Literal["peft"] = dataclasses.field(default="peft", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        peft_config(self)  # every problem is a ConfigError now, before any model is touched

    @property
    def peft_type(self) -> str:
        """The peft method's name, upper case (``LOHA``)."""
        kind = self.config.get("peft_type", "") if isinstance(self.config, Mapping) else ""
        return str(kind).upper()

    def __hash__(self) -> int:  # the dict field makes the generated hash fail
        return hash((self.type, repr(sorted(self.config.items()))))


def peft_config(config: AnyPeft) -> Any:
    """The peft configuration object ``config`` describes, or a :class:`ConfigError`."""
    from peft import mapping  # noqa: PLC0415 - peft loads only when a peft method is used

    configs = {getattr(k, "value", k): v for k, v in mapping.PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    fields = _checked_fields(config, known=configs)
    kind = fields["peft_type"]
    try:
        made: Any = configs[kind](**fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"peft: invalid {kind} config: {' '.join(str(exc).split())}") from None
    if made.is_prompt_learning:
        if kind not in _PROMPT_TYPES:
            raise ConfigError(
                f"peft: {kind} needs peft's own PeftModel wrapper; the prompt learning methods "
                f"run here are {', '.join(_PROMPT_TYPES)}"
            )
        return made
    if _tuner_class(kind) is None:
        raise ConfigError(f"peft: {kind} has no tuner that places layers in a model")
    if kind in _REFUSED_TYPES:
        raise ConfigError(f"peft: {kind} {_REFUSED_TYPES[kind]}")
    if kind == "TRAINABLE_TOKENS" and not fields.get("token_indices"):
        raise ConfigError(
            "peft: TRAINABLE_TOKENS needs config.token_indices, the ids of the tokens whose "
            "embeddings train (e.g. [32000, 32001] for added special tokens)"
        )
    rewrite = base_rewriting_init(fields)
    if rewrite:
        raise ConfigError(
            f"peft: {kind} init_lora_weights {rewrite!r} rewrites the base model's weights (it "
            "subtracts the adapter's starting value from them), but the base is frozen and "
            "shared by every adapter, so the saved adapter would be wrong on the real base. "
            "PiSSA and OLoRA without that: method {type: lora, init: pissa} (or olora); "
            "otherwise the default init (true), 'gaussian', 'orthogonal' or 'eva'"
        )
    if not made.target_modules and not getattr(made, "target_parameters", None):
        raise ConfigError(
            f"peft: {kind} needs config.target_modules (module names such as "
            '["query", "value"]); peft guesses them only for some model types'
        )
    return made


def base_rewriting_init(peft_fields: Mapping[str, Any]) -> str | None:
    """The LoRA ``init_lora_weights`` of a peft config when it rewrites the base weights
    (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA start the adapter from the weights and leave the
    residual in the base), else None."""
    init = str(peft_fields.get("init_lora_weights", True)).lower()
    return init if init.startswith(_BASE_REWRITING_INITS) else None


def _tuner_class(kind: str) -> type | None:
    """peft's tuner class for method ``kind`` (``LOHA`` -> ``LoHaModel``)."""
    from peft import mapping  # noqa: PLC0415

    tuners = {getattr(k, "value", k): v for k, v in mapping.PEFT_TYPE_TO_TUNER_MAPPING.items()}
    return tuners.get(kind)


def _checked_fields(config: AnyPeft, *, known: Mapping[str, Any]) -> dict[str, Any]:
    """The config's fields for peft, after the checks that need no peft class."""
    if not isinstance(config.config, Mapping):
        raise ConfigError(
            f"peft: config must be a mapping of peft fields, got {config.config!r:.80}"
        )
    size = len(json.dumps(config.config, default=str))
    if size > _MAX_CONFIG_BYTES:
        raise ConfigError(f"peft: config is {size} bytes of JSON; at most {_MAX_CONFIG_BYTES}")
    fields = dict(config.config)
    kind = config.peft_type
    if kind not in known:
        raise ConfigError(
            f"peft: config.peft_type {fields.get('peft_type')!r} is not a peft method; one of "
            f"{', '.join(sorted(known))}"
        )
    for key, why in _REFUSED_FIELDS.items():
        if fields.get(key):
            raise ConfigError(f"peft: config.{key}: {why}")
    fields.pop("task_type", None)  # the head decides; peft only needs it for its own wrappers
    return {**fields, "peft_type": kind}


def tuner_layers(model: nn.Module) -> Iterator[tuple[str, Any]]:
    """``(name, layer)`` for every peft tuner layer in ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: PLC0415

    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            yield name, module


class PeftRun(Method):
    """Hugging Face peft runs the adapter; peft_core keeps its lifecycle."""

    config_class: ClassVar[type[Any]] = AnyPeft
    type = "peft"
    summary = (
        "any Hugging Face peft method (LoHa, LoKr, OFT, AdaLoRA, prompt tuning, ...), run by peft"
    )
    places_itself = True
    merge_scope = "tuners, not prompt methods"
    order = 1000  # last: a PEFT file goes to a native method first

    def targets(self, model: nn.Module, config: Any) -> list[Target]:
        return []

    # -- placing, switching, removing --------------------------------------------------------

    def place(self, model: nn.Module, record: AdapterRecord) -> None:
        made = peft_config(cast(AnyPeft, record.config))
        if made.is_prompt_learning:
            _place_prompt(model, record.name, made)
            return
        from peft import PeftModel  # noqa: PLC0415

        _refuse_native_layers(model, made)
        grads = {p: p.requires_grad for p in model.parameters()}
        # VeRA, VB-LoRA...: adapters of one kind share state (projections, a vector bank) that
        # peft keeps on one tuner, so each further adapter of the kind joins that tuner.
        shared = _shared_wrapper(model, made.peft_type)
        try:
            with _quiet_adalora_false_alarms(made):
                if shared is not None:
                    shared.add_adapter(record.name, made)
                    wrapper = shared
                else:
                    wrapper = PeftModel(model, made, adapter_name=record.name)
        except ValueError as exc:  # peft's words for targets that match nothing
            raise TargetError(f"peft {_kind(made)}: {' '.join(str(exc).split())}") from None
        _wrappers(model)[record.name] = wrapper
        for param, wanted in grads.items():  # peft freezes the base; set_trainable decides that
            param.requires_grad_(wanted)
        _refuse_stranded_weights(self, model, record.name, made)

    def switch(self, model: nn.Module, on: Sequence[str]) -> None:
        grads = {p: p.requires_grad for p in model.parameters()}  # switching must not (un)freeze
        model.__dict__[_SWITCHED_ON] = list(on)
        merged = _peft_merge.merged_names(model)  # in the weights already: add nothing more
        for _, layer in tuner_layers(model):
            present = [
                n for n in on if n in layer._all_available_adapter_names() and n not in merged
            ]
            if present:
                layer.enable_adapters(True)
                layer.set_adapter(present)
            else:
                layer.enable_adapters(False)
        model.__dict__[_PROMPTS_ON] = [n for n in on if n in _prompts(model)]
        for param, wanted in grads.items():
            param.requires_grad_(wanted)

    def remove(self, model: nn.Module, name: str) -> None:
        _peft_merge.forget(model, name)  # merged: the weights keep it, as with native adapters
        prompts = _prompts(model)
        if name in prompts:
            del prompts[name]
            model.__dict__[_PROMPTS_ON] = [n for n in _prompts_on(model) if n != name]
            return
        for module_name, layer in list(tuner_layers(model)):
            if name not in layer._all_available_adapter_names():
                continue
            layer.delete_adapter(name)
            if not layer._all_available_adapter_names():
                parent_name, _, child = module_name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child, layer.get_base_layer())
        wrapper = _wrappers(model).pop(name, None)
        if wrapper is not None:
            wrapper.peft_config.pop(name, None)  # a shared tuner keeps serving the others
        configs = getattr(model, "peft_config", {})
        configs.pop(name, None)
        if not configs and hasattr(model, "peft_config"):
            del model.peft_config

    # -- merging --------------------------------------------------------------------------------

    def why_not_mergeable_for(self, config: Any) -> str | None:
        if peft_config(cast(AnyPeft, config)).is_prompt_learning:
            return (
                "its virtual tokens are inputs, not weights, so there is nothing to merge into "
                "the base; serve it with its PEFT files (adapterops export --for peft)"
            )
        return None

    def merge_placed(self, model: nn.Module, name: str) -> bool:
        layers = [
            (module_name, layer)
            for module_name, layer in tuner_layers(model)
            if name in layer._all_available_adapter_names()
        ]
        if not _peft_merge.merge(model, name, layers):
            return False
        self.switch(model, model.__dict__.get(_SWITCHED_ON, []))
        return True

    def unmerge_placed(self, model: nn.Module, name: str) -> bool:
        if not _peft_merge.unmerge(model, name):
            return False
        self.switch(model, model.__dict__.get(_SWITCHED_ON, []))
        return True

    def is_merged_placed(self, model: nn.Module, name: str) -> bool:
        return name in _peft_merge.merged_names(model)

    # -- parameters and files -----------------------------------------------------------------

    def own_parameters(self, model: nn.Module, name: str) -> list[nn.Parameter]:
        if name in _prompts(model):
            return list(_prompts(model)[name].parameters())
        params: dict[int, nn.Parameter] = {}  # by identity: a shared bank appears in every layer
        for _, layer in tuner_layers(model):
            for attribute in layer.adapter_layer_names:
                holder = getattr(layer, attribute)
                if name in holder:
                    value = holder[name]
                    found = [value] if isinstance(value, nn.Parameter) else value.parameters()
                    params.update((id(p), p) for p in found)
        return list(params.values())

    def own_state(self, model: nn.Module, name: str) -> dict[str, Tensor]:
        if name in _prompts(model):
            return {"prompt_embeddings": _prompt(model, name).prompt()}
        from peft import get_peft_model_state_dict  # noqa: PLC0415

        # Through the PeftModel: peft's per-method rules apply (AdaLoRA's pruned ranks).
        wrapper = _wrappers(model)[name]
        with _quiet_adalora_false_alarms(wrapper.peft_config[name]):
            state = get_peft_model_state_dict(wrapper, adapter_name=name)
        return {k.removeprefix(_WRAPPED_PREFIX): v for k, v in state.items()}

    def load_own_state(self, model: nn.Module, name: str, tensors: dict[str, Tensor]) -> None:
        if name in _prompts(model):
            _prompt(model, name).fill(tensors["prompt_embeddings"])
            return
        from peft import set_peft_model_state_dict  # noqa: PLC0415

        # the model's own modules under peft's prefix; a tuner's shared state (FRoD's
        # ``base_model.frod_V``, VeRA's ``base_model.vera_A``) is saved under the tuner's
        wrapped = {k if k.startswith(_TUNER_PREFIX) else f"{_WRAPPED_PREFIX}{k}": v
                   for k, v in tensors.items()}  # fmt: skip
        set_peft_model_state_dict(_wrappers(model)[name], wrapped, adapter_name=name)

    def training_forward(self, model: nn.Module, name: str) -> Callable[..., Any] | None:
        """peft's tuner forward when it adds to the loss (AdaLoRA's orthogonal regulariser)."""
        from peft.tuners.tuners_utils import BaseTuner  # noqa: PLC0415

        tuner = _wrappers(model)[name].base_model if name in _wrappers(model) else None
        if tuner is None or type(tuner).forward is BaseTuner.forward:
            return None
        return cast(Callable[..., Any], tuner)

    def after_optimizer_step(self, model: nn.Module, name: str, step: int) -> None:
        """AdaLoRA re-allocates its rank budget here (peft's ``update_and_allocate``)."""
        tuner = _wrappers(model)[name].base_model if name in _wrappers(model) else None
        update = getattr(tuner, "update_and_allocate", None)
        if update is not None:
            update(step)

    def peft_files(
        self, model: nn.Module, record: AdapterRecord
    ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        # Tensors first: peft rewrites the config while it gathers them (AdaLoRA's rank pattern
        # loses the adapter name), and the file must hold the rewritten config.
        tensors = self.own_state(model, record.name)
        fields = _placed_config(model, record).to_dict()
        for key, value in fields.items():
            if isinstance(value, set):
                fields[key] = sorted(value)
        fields["inference_mode"] = True
        return _feedforward_within_targets(fields, model, record.name), tensors

    def reads_peft(self, peft_config: dict[str, Any]) -> bool:
        """Any peft method no native method reads (the table asks natives first)."""
        try:
            AnyPeft(portable_config(peft_config))
        except ConfigError:
            return False
        return True

    def from_peft(self, peft_config: dict[str, Any], tensors: dict[str, Tensor]) -> PeftImport:
        head_free = {k: v for k, v in tensors.items() if self.owns_peft_key(k)}
        return PeftImport(AnyPeft(portable_config(peft_config)), [], head_free)

    def owns_peft_key(self, key: str) -> bool:
        return key == "prompt_embeddings" or (".modules_to_save." not in key and not _is_head(key))


# peft 0.21 warns about two things AdaLoRA does on purpose: its rank allocator writes
# ``rank_pattern`` under its ``lora_E`` parameters' names, which peft's check for pattern keys
# that match no module (meant for a user's typo in LoRA's rank_pattern) never matches; and a
# module whose whole rank was pruned saves zero-sized tensors, which peft's check for
# ungathered FSDP shards takes for one. Both were printed on saves and loads of AdaLoRA
# adapters, telling the user of a fault that is not there. Only AdaLoRA's are silenced.
_ADALORA_FALSE_ALARMS = (
    "The following rank_pattern keys did not match any targeted module",
    r"Adapter '.*': \d+ LoRA tensor\(s\) have invalid shape",
)


@contextlib.contextmanager
def _quiet_adalora_false_alarms(made: Any) -> Iterator[None]:
    """Silence peft's false alarms about AdaLoRA's own rank pattern and pruned ranks."""
    with warnings.catch_warnings():
        if getattr(made, "peft_type", None) == "ADALORA":
            for message in _ADALORA_FALSE_ALARMS:
                warnings.filterwarnings("ignore", message=message)
        yield


def _refuse_native_layers(model: nn.Module, made: Any) -> None:
    """peft cannot wrap a layer that runs native adapters (it fails inside, unhelpfully): the
    layers peft would take are checked first, with peft's own matching rule."""
    from peft.tuners.tuners_utils import check_target_module_exists  # noqa: PLC0415

    for module_name, module in model.named_modules():
        if isinstance(module, AdaptedLayer) and check_target_module_exists(made, module_name):
            raise TargetError(
                f"{module_name} already runs native adapters ({', '.join(module.adapters)}); "
                f"a peft {_kind(made)} adapter cannot wrap it: target other modules, or "
                "load it onto a model of its own"
            )


def _feedforward_within_targets(
    fields: dict[str, Any], model: nn.Module, name: str
) -> dict[str, Any]:
    """IA3 fields peft can read back.

    Without ``feedforward_modules`` peft fills in its default for the model type (BERT:
    ``output.dense``) even where that is no target, and then refuses its own file ("should be a
    subset of target_modules"). Entries that rescale no layer are dropped; a layer that a
    feedforward entry outside the targets does rescale is named in full in both lists (it is
    already adapted, so naming it adapts nothing new)."""
    feedforward, targets = fields.get("feedforward_modules"), fields.get("target_modules")
    if not isinstance(feedforward, list) or not isinstance(targets, list):
        return fields  # regular expressions: peft skips the check
    if set(feedforward) <= set(targets):
        return fields
    rescaled_inputs = [
        layer_name
        for layer_name, layer in tuner_layers(model)
        if getattr(layer, "is_feedforward", False) and name in getattr(layer, "ia3_l", {})
    ]
    kept = [f for f in feedforward if f in targets]
    named = [n for n in rescaled_inputs if not any(n.endswith(f) for f in kept)]
    return {**fields, "feedforward_modules": kept + named, "target_modules": targets + named}


def _is_head(key: str) -> bool:
    # Heads a PEFT file may carry beside the adapter (written by write_peft or by peft itself).
    return key.split(".", maxsplit=1)[0] in _HEAD_MODULES


def portable_config(peft_config: dict[str, Any]) -> dict[str, Any]:
    """The fields of a saved ``adapter_config.json`` worth keeping in a spec-like config."""
    drop = {"task_type", "modules_to_save", "base_model_name_or_path", "revision", "inference_mode"}
    drop |= {"auto_mapping", "peft_version"}
    return {k: v for k, v in peft_config.items() if k not in drop}


def _refuse_stranded_weights(method: Method, model: nn.Module, name: str, made: Any) -> None:
    """Some peft methods (OFT, ...) build their weights on the base weight's device: ``meta`` on
    a layer accelerate offloads, where they would hold nothing. Taken out again, in one line."""
    stranded = [
        module_name
        for module_name, layer in tuner_layers(model)
        if is_offloaded(layer.get_base_layer())  # (a plan's model is all on meta: fine)
        for key, tensor in layer.named_parameters()
        if f".{name}." in f".{key}." and tensor.is_meta
    ]
    if stranded:
        method.remove(model, name)
        raise ConfigError(offloaded_weight_message(stranded[0], f"peft {_kind(made)}"))


def _placed_config(model: nn.Module, record: AdapterRecord) -> Any:
    if record.name in _prompts(model):
        return _prompt(model, record.name).config
    return _wrappers(model)[record.name].peft_config[record.name]


def _kind(made: Any) -> str:
    """A peft config's method name as users write it (``LOHA``, not ``PeftType.LOHA``)."""
    return str(getattr(made.peft_type, "value", made.peft_type))


def _shared_wrapper(model: nn.Module, kind: str) -> Any:
    """The PeftModel whose tuner already holds adapters of ``kind``, when that tuner keeps state
    shared between them (peft's ``uses_shared_state``); else None."""
    tuner = _tuner_class(kind)
    shares = getattr(tuner, "uses_shared_state", False) or kind in _SHARED_BUT_UNFLAGGED
    if tuner is None or not shares:
        return None
    return next((w for w in _wrappers(model).values() if type(w.base_model) is tuner), None)


def _wrappers(model: nn.Module) -> dict[str, Any]:
    """The PeftModel kept beside ``model`` for each of its peft tuner adapters."""
    wrappers: dict[str, Any] = model.__dict__.setdefault(_WRAPPERS, {})
    return wrappers


# -- prompt learning -------------------------------------------------------------------------


class Prompt(nn.Module):
    """The virtual tokens of one prompt adapter; ``prompt()`` is one row per virtual token:
    an input embedding (prompt tuning, P-tuning) or every layer's key and value (prefix)."""

    def __init__(self, config: Any, word_embeddings: nn.Module) -> None:
        super().__init__()
        from peft.tuners.p_tuning.model import PromptEncoder  # noqa: PLC0415
        from peft.tuners.prefix_tuning.model import PrefixEncoder  # noqa: PLC0415
        from peft.tuners.prompt_tuning.model import PromptEmbedding  # noqa: PLC0415

        self.config = config
        self.tokens = config.num_virtual_tokens * config.num_transformer_submodules
        self.is_prefix = config.peft_type == "PREFIX_TUNING"
        if self.is_prefix:  # peft's table, optionally reparametrised through an MLP
            self.encoder: nn.Module = PrefixEncoder(config)
        elif config.peft_type == "P_TUNING":  # reparametrised through peft's MLP/LSTM encoder
            self.encoder = PromptEncoder(config)
        else:  # peft's initialisation (random, sampled vocabulary or text)
            self.encoder = PromptEmbedding(config, word_embeddings)
        self.register_buffer("indices", torch.arange(self.tokens), persistent=False)

    def prompt(self) -> Tensor:
        """The prompt embeddings, one row per virtual token."""
        out: Tensor = self.encoder(self.indices)
        return out

    def fill_cache(self, cache: Any, batch: int, dtype: torch.dtype) -> None:
        """Append this prefix's keys and values to every layer of ``cache`` (peft's layout: a
        row holds, layer by layer, the key then the value, each ``heads x head_dim`` wide)."""
        config = self.config
        heads = config.num_attention_heads
        rows = (
            self.prompt()
            .to(dtype)
            .view(self.tokens, config.num_layers * 2, heads, config.token_dim // heads)
        )
        states = rows.permute(1, 2, 0, 3).unsqueeze(1).expand(-1, batch, -1, -1, -1)
        for layer in range(config.num_layers):
            cache.update(states[2 * layer], states[2 * layer + 1], layer)

    @torch.no_grad()
    def fill(self, embeddings: Tensor) -> None:
        """Load saved prompt embeddings (a P-tuning prompt is then a fixed table)."""
        rows, width = embeddings.shape
        table = nn.Embedding(rows, width, device=embeddings.device, dtype=embeddings.dtype)
        table.weight.copy_(embeddings)
        self.encoder = _Table(table)


class _Table(nn.Module):
    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self.embedding = embedding

    def forward(self, indices: Tensor) -> Tensor:
        out: Tensor = self.embedding(indices)
        return out


def _prompts(model: nn.Module) -> nn.ModuleDict:
    prompts = getattr(model, PROMPTS, None)
    if prompts is None:
        prompts = nn.ModuleDict()
        model.add_module(PROMPTS, prompts)
    return prompts


def _prompt(model: nn.Module, name: str) -> Prompt:
    return cast(Prompt, _prompts(model)[name])


def _prompts_on(model: nn.Module) -> list[str]:
    on: list[str] = model.__dict__.get(_PROMPTS_ON, [])
    return on


def _place_prompt(model: Any, name: str, made: Any) -> None:
    from peft.utils.other import _prepare_prompt_learning_config  # noqa: PLC0415

    if getattr(model.config, "is_encoder_decoder", False):
        raise TargetError(
            f"peft {_kind(made)}: prompts are prepended to decoder-only and encoder-only "
            "models here; an encoder-decoder model needs peft's PeftModel"
        )
    if made.peft_type == "PREFIX_TUNING" and _cache_keyword(model) is None:
        raise TargetError(
            f"peft PREFIX_TUNING puts its prefix into the key-value cache, and "
            f"{type(model).__name__} takes none (a decoder such as GPT-2 or Llama does): use "
            "PROMPT_TUNING or P_TUNING for this model"
        )
    made = _prepare_prompt_learning_config(copy.deepcopy(made), model.config)
    made.num_transformer_submodules = 1
    embeddings = model.get_input_embeddings()
    prompt = Prompt(made, embeddings).to(embeddings.weight.device)
    _prompts(model)[name] = prompt
    if _HOOK not in model.__dict__:
        model.__dict__[_HOOK] = model.register_forward_pre_hook(_apply_prompts, with_kwargs=True)
        model.__dict__[_AFTER_HOOK] = model.register_forward_hook(_drop_unwanted_cache)


_CACHE_KEYWORDS: dict[type, str | None] = {}


def _cache_keyword(model: nn.Module) -> str | None:
    """The name under which ``model``'s forward takes its key-value cache, if it takes one
    (``cache`` since transformers 5.24, ``past_key_values`` before)."""
    kind = type(model)
    if kind not in _CACHE_KEYWORDS:
        parameters = inspect.signature(kind.forward).parameters
        _CACHE_KEYWORDS[kind] = next(
            (k for k in ("cache", "past_key_values") if k in parameters), None
        )
    return _CACHE_KEYWORDS[kind]


def _apply_prompts(
    model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """Put the active prompts in front of the inputs, as peft's ``PeftModel`` forward does:
    embedded prompts before the input embeddings, prefixes into the key-value cache. A cache
    that already holds tokens (the next steps of ``generate``) holds the prompts too."""
    model.__dict__.pop(_UNWANTED_CACHE, None)  # left by a forward that raised
    prompts = _prompts(model)
    on = [_prompt(model, n) for n in _prompts_on(model) if n in prompts]
    if not on:
        return None
    kwargs = {**_keywords(model, args), **kwargs}
    keyword = _cache_keyword(model)
    cache = kwargs.get(keyword) if keyword is not None else None
    if cache is None or cache.get_seq_length() == 0:
        _prepend(model, kwargs, [p for p in on if not p.is_prefix])
        prefixes = [p for p in on if p.is_prefix]
        if prefixes:
            kwargs[cast(str, keyword)] = _prefixed_cache(model, cache, prefixes, kwargs)
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2:  # every virtual token is attended to
        virtual = sum(p.tokens for p in on)
        ones = torch.ones((mask.shape[0], virtual), dtype=mask.dtype, device=mask.device)
        kwargs["attention_mask"] = torch.cat([ones, mask], dim=1)
    # positions restart from the virtual tokens: the model counts them from its cache
    kwargs.pop("position_ids", None)
    kwargs.pop("cache_position", None)
    return (), kwargs


def _keywords(model: nn.Module, args: tuple[Any, ...]) -> dict[str, Any]:
    """Positional arguments of ``model``'s forward by name (``model(ids, mask)``)."""
    if not args:
        return {}
    names = [n for n in inspect.signature(type(model).forward).parameters if n != "self"]
    return dict(zip(names, args, strict=False))


def _prepend(model: Any, kwargs: dict[str, Any], embedded: list[Prompt]) -> None:
    """Prompt embeddings before the input embeddings; token types and labels widened."""
    if not embedded:
        return
    embeds = kwargs.pop("inputs_embeds", None)
    if embeds is None:
        embeds = model.get_input_embeddings()(kwargs["input_ids"])
    kwargs["input_ids"] = None
    batch = embeds.shape[0]
    virtual = torch.cat([p.prompt() for p in embedded]).to(embeds.dtype)
    count = virtual.shape[0]
    kwargs["inputs_embeds"] = torch.cat([virtual.expand(batch, -1, -1), embeds], dim=1)
    for key, fill in {"token_type_ids": 0, "labels": -100}.items():
        value = kwargs.get(key)
        if value is not None and value.dim() == 2:  # per-token values (not sequence labels)
            pad = torch.full((batch, count), fill, dtype=value.dtype, device=value.device)
            kwargs[key] = torch.cat([pad, value], dim=1)


def _prefixed_cache(model: Any, cache: Any, prefixes: list[Prompt], kwargs: dict[str, Any]) -> Any:
    """``cache`` (or a new one) holding the prefixes' keys and values for every layer."""
    if model.training and torch.is_grad_enabled() and _checkpointed(model):
        raise ConfigError(
            "prefix tuning reaches the model through its key-value cache, which gradient "
            "checkpointing drops: train a PREFIX_TUNING adapter without gradient checkpointing"
        )
    if cache is None:
        from transformers import DynamicCache  # noqa: PLC0415

        cache = DynamicCache(config=model.config)
        wanted = kwargs.get("use_cache")
        if not (getattr(model.config, "use_cache", False) if wanted is None else wanted):
            # the model returns the cache it was given; a caller that asked for none (generate
            # with use_cache=False, training) must not get it back and pass it in again
            model.__dict__[_UNWANTED_CACHE] = True
    inputs = kwargs["input_ids"] if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
    dtype = model.get_input_embeddings().weight.dtype
    for prefix in prefixes:
        prefix.fill_cache(cache, inputs.shape[0], dtype)
    return cache


def _drop_unwanted_cache(model: Any, args: tuple[Any, ...], output: Any) -> Any:
    """Take out of ``output`` the cache the pre-hook made for a caller that wanted none."""
    if model.__dict__.pop(_UNWANTED_CACHE, False) and isinstance(output, MutableMapping):
        keyword = _cache_keyword(model)
        if keyword in output:  # ``cache`` since transformers 5.24, ``past_key_values`` before
            output[keyword] = None
    return output


def _checkpointed(model: nn.Module) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


METHOD = PeftRun()
