"""Run a registered adapter on text: ``adapterops predict REF --text ...``.

Classification adapters return the label and its probabilities; masked-LM adapters the most
likely tokens for each mask; causal-LM adapters a greedy continuation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

import peft_core as pc
from peft_core.offload import input_device
from registry import AdapterVersion, Composition, Registry

from .errors import DataError
from .members import load_members, members_of_version
from .spec import AdapterSpec, parse_spec, spec_of_version
from .train_job import load_inference_model

__all__ = [
    "Prediction",
    "predict",
    "predict_composition",
    "predict_many",
    "spec_of_composition",
]

_TOP_TOKENS = 5
_NEW_TOKENS = 20


@dataclass
class Prediction:
    """One text's answer."""

    text: str
    label: int | None = None
    label_name: str = ""  # the spec's name for the label, when it names them
    probabilities: list[float] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # masked LM: top tokens of the first mask
    continuation: str = ""  # causal LM

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (empty fields dropped)."""
        return {k: v for k, v in asdict(self).items() if v not in (None, [], "")}


def predict(
    registry: Registry, ref: str, texts: list[str], *, skip_probe: bool = False
) -> tuple[str, list[Prediction]]:
    """The version ``ref`` resolves to, and its prediction for each text (after its golden
    probes pass on this base model, unless ``skip_probe``)."""
    if not texts:
        raise DataError("give at least one --text")
    version = registry.get(ref)
    spec = spec_of_version(version, "predict")
    model, tokenizer = load_inference_model(spec)
    load_members(model, members_of_version(version), registry)
    registry.load_into(model, version.ref, name=spec.name, skip_probe=skip_probe)
    pc.set_active(model, spec.name)
    return version.ref, _answers(model, tokenizer, texts, spec)


def predict_composition(
    registry: Registry, ref: str, texts: list[str], *, skip_probe: bool = False
) -> tuple[str, list[Prediction]]:
    """The composition version ``ref`` resolves to (``pt-sst2@champion``), and its prediction for
    each text: every member loaded and checked, the composition active. The base model, head
    and label names come from the composition's evaluation spec, else from its last member's
    (the task adapter of a MAD-X stack)."""
    if not texts:
        raise DataError("give at least one --text")
    composition = registry.composition(ref)
    spec = spec_of_composition(registry, composition, "predict")
    model, tokenizer = load_inference_model(spec)
    registry.load_definition(
        model, composition.definition, composition.members, skip_probe=skip_probe
    )  # the version read above, not looked up again
    return composition.ref, _answers(model, tokenizer, texts, spec)


def spec_of_composition(registry: Registry, composition: Composition, command: str) -> AdapterSpec:
    """The spec that says which base model, head and label names a composition runs with: its
    evaluation spec, else its last member's (the task adapter of a MAD-X stack)."""
    if composition.evaluation:
        return parse_spec(composition.evaluation, source=f"{composition.ref} evaluation")
    last = registry.get(composition.members[-1])
    if not last.spec:
        raise DataError(
            f"{composition.ref} was saved without --evaluation and its last member {last.ref} "
            f"without a spec, so {command} cannot tell its base model settings and head: save "
            "it again with `adapterops composition save ... --evaluation SPEC`"
        )
    return spec_of_version(last, command)


def _answers(model: Any, tokenizer: Any, texts: list[str], spec: AdapterSpec) -> list[Prediction]:
    """Each text answered as ``spec``'s head answers, by the model as it is set up."""
    model.eval()
    run = {"classification": _classify, "masked-lm": _fill_mask, "causal-lm": _continue}
    return run[spec.head.type](model, tokenizer, texts, spec)


def predict_many(
    registry: Registry, refs: list[str], texts: list[str], *, skip_probe: bool = False
) -> list[tuple[str, list[Prediction]]]:
    """Several versions on the same texts, in one batch per text: row ``i`` runs through
    version ``i`` (``peft_core.per_row``). They must share the base model and head; stacks and
    fusions (versions over other adapters) are predicted one at a time. Versions peft runs
    (``type: peft``), whose layers take one adapter per batch and no native adapter beside
    it, answer as they do alone."""
    if len(refs) == 1:
        return [predict(registry, refs[0], texts, skip_probe=skip_probe)]
    if not texts:
        raise DataError("give at least one --text")
    versions = [registry.get(ref) for ref in refs]
    specs = [spec_of_version(v, "predict") for v in versions]
    _check_together(versions, specs)
    answers: dict[str, list[Prediction]] = {}
    routed = [
        (v, s) for v, s in zip(versions, specs, strict=True)
        if not pc.method_of(v.method).places_itself
    ]  # fmt: skip
    if len(routed) == 1:
        answers[routed[0][0].ref] = predict(
            registry, routed[0][0].ref, texts, skip_probe=skip_probe
        )[1]
    elif routed:
        answers.update(_one_batch_per_text(registry, routed, texts, skip_probe=skip_probe))
    for version in versions:
        if version.ref not in answers:
            answers[version.ref] = predict(registry, version.ref, texts, skip_probe=skip_probe)[1]
    return [(v.ref, answers[v.ref]) for v in versions]


def _one_batch_per_text(
    registry: Registry,
    routed: list[tuple[AdapterVersion, AdapterSpec]],
    texts: list[str],
    *,
    skip_probe: bool,
) -> dict[str, list[Prediction]]:
    """Versions loaded into one model, each text answered by all of them in one batch."""
    specs = [spec for _, spec in routed]
    model, tokenizer = load_inference_model(specs[0])
    names = [f"{v.name}-v{v.version}" for v, _ in routed]  # two versions of one adapter coexist
    for (version, _), name in zip(routed, names, strict=True):
        registry.load_into(model, version.ref, name=name, skip_probe=skip_probe)
    model.eval()
    answers: dict[str, list[Prediction]] = {version.ref: [] for version, _ in routed}
    with torch.no_grad(), pc.per_row(model, names):
        for text in texts:
            rows = _answer_rows(model, tokenizer, text, specs, copies=len(names))
            for (version, _), prediction in zip(routed, rows, strict=True):
                answers[version.ref].append(prediction)
    return answers


def _check_together(versions: list[AdapterVersion], specs: list[AdapterSpec]) -> None:
    first = specs[0]
    for version, spec in zip(versions, specs, strict=True):
        if members_of_version(version):
            raise DataError(
                f"{version.ref} runs over other adapters (a stack or fusion): predict it alone"
            )
        same = (spec.base_model, spec.head.type, spec.head.num_labels, spec.data.messages is None)
        if same != (first.base_model, first.head.type, first.head.num_labels,
                    first.data.messages is None):  # fmt: skip
            raise DataError(
                f"{version.ref} ({spec.base_model}, {spec.head.type} head) cannot share a batch "
                f"with {versions[0].ref} ({first.base_model}, {first.head.type} head): predict "
                "several versions at once over one base model and head"
            )


def _answer_rows(
    model: Any, tokenizer: Any, text: str, specs: list[AdapterSpec], *, copies: int
) -> list[Prediction]:
    """``text`` in ``copies`` rows, each answered by its row's adapter."""
    head = specs[0].head.type
    if head == "masked-lm":
        if tokenizer.mask_token not in text:
            raise DataError(f"a masked-LM adapter fills {tokenizer.mask_token}: put it in {text!r}")
        return _fill_one(model, tokenizer, text, copies=copies)
    if head == "causal-lm":
        return _continue_one(model, tokenizer, text, specs[0], copies=copies)
    rows = _classify(model, tokenizer, [text] * copies, specs[0])
    for prediction, spec in zip(rows, specs, strict=True):  # each version names its own labels
        names = spec.head.label_names or []
        prediction.label_name = names[prediction.label or 0] if names else ""
    return rows


def _on(model: Any, encoded: Any) -> dict[str, Any]:
    """The tokenizer's tensors on the model's device."""
    device = input_device(model)  # (an offloaded first layer's weights wait on meta)
    return {key: value.to(device) for key, value in encoded.items()}


@torch.no_grad()
def _classify(model: Any, tokenizer: Any, texts: list[str], spec: AdapterSpec) -> list[Prediction]:
    encoded = tokenizer(
        texts, padding=True, truncation=True, max_length=spec.train.max_length, return_tensors="pt"
    )
    probabilities = model(**_on(model, encoded)).logits.softmax(-1).cpu()  # (texts, labels)
    names = spec.head.label_names or []
    labels = [int(p.argmax()) for p in probabilities]
    return [
        Prediction(
            text=t,
            label=label,
            label_name=names[label] if names else "",
            probabilities=[round(float(x), 4) for x in p],
        )
        for t, p, label in zip(texts, probabilities, labels, strict=True)
    ]


@torch.no_grad()
def _fill_mask(model: Any, tokenizer: Any, texts: list[str], spec: AdapterSpec) -> list[Prediction]:
    mask = tokenizer.mask_token
    missing = [t for t in texts if mask not in t]
    if missing:
        raise DataError(f"a masked-LM adapter fills {mask}: put it in each text ({missing[0]!r})")
    return [p for text in texts for p in _fill_one(model, tokenizer, text, copies=1)]


def _fill_one(model: Any, tokenizer: Any, text: str, *, copies: int) -> list[Prediction]:
    """The top tokens for the first mask of ``text``, in ``copies`` rows of one batch."""
    encoded = tokenizer([text] * copies, return_tensors="pt")
    position = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0])
    top = model(**_on(model, encoded)).logits[:, position].topk(_TOP_TOKENS).indices  # (copies, k)
    return [
        Prediction(text=text, tokens=[tokenizer.decode([i]).strip() for i in row])
        for row in top.tolist()
    ]


def _prompt(tokenizer: Any, text: str, spec: AdapterSpec, copies: int = 1) -> Any:
    """The model's input for ``text`` (in ``copies`` rows): as a user turn of the chat template
    when the adapter was trained on chat messages, else the text itself."""
    if spec.data.messages is None:
        encoded = tokenizer([text] * copies, return_tensors="pt")
    else:
        turn = [{"role": "user", "content": text}]
        encoded = tokenizer.apply_chat_template(
            turn, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    # a decoder reads ids and mask; some tokenizers add segment ids generate() refuses
    return {
        k: encoded[k].expand(copies, -1) for k in ("input_ids", "attention_mask") if k in encoded
    }


@torch.no_grad()
def _continue(model: Any, tokenizer: Any, texts: list[str], spec: AdapterSpec) -> list[Prediction]:
    return [p for text in texts for p in _continue_one(model, tokenizer, text, spec, copies=1)]


def _continue_one(
    model: Any, tokenizer: Any, text: str, spec: AdapterSpec, *, copies: int
) -> list[Prediction]:
    """A greedy continuation of ``text`` in ``copies`` rows of one batch."""
    encoded = _on(model, _prompt(tokenizer, text, spec, copies))
    output = model.generate(
        **encoded, max_new_tokens=_NEW_TOKENS, do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    start = encoded["input_ids"].shape[1]
    return [Prediction(text=text, continuation=tokenizer.decode(row[start:])) for row in output]
