"""Run a registered adapter on text: ``adapterops predict REF --text ...``.

Classification adapters return the label and its probabilities; masked-LM adapters the most
likely tokens for each mask; causal-LM adapters a greedy continuation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

import peft_core as pc
from registry import Registry

from .errors import DataError
from .members import load_members, members_of_version
from .spec import AdapterSpec, spec_of_version
from .train_job import load_base_model

__all__ = ["Prediction", "predict"]

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
    model, tokenizer = load_base_model(spec)
    load_members(model, members_of_version(version), registry)
    registry.load_into(model, version.ref, name=spec.name, skip_probe=skip_probe)
    pc.set_active(model, spec.name)
    model.eval()
    run = {"classification": _classify, "masked-lm": _fill_mask, "causal-lm": _continue}
    return version.ref, run[spec.head.type](model, tokenizer, texts, spec)


@torch.no_grad()
def _classify(model: Any, tokenizer: Any, texts: list[str], spec: AdapterSpec) -> list[Prediction]:
    encoded = tokenizer(
        texts, padding=True, truncation=True, max_length=spec.train.max_length, return_tensors="pt"
    )
    probabilities = model(**encoded).logits.softmax(-1)  # (texts, labels)
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
    results = []
    for text in texts:
        encoded = tokenizer(text, return_tensors="pt")
        position = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0])
        logits = model(**encoded).logits[0, position]  # (vocab,)
        top = logits.topk(_TOP_TOKENS).indices.tolist()
        results.append(Prediction(text=text, tokens=[tokenizer.decode([i]).strip() for i in top]))
    return results


def _prompt(tokenizer: Any, text: str, spec: AdapterSpec) -> Any:
    """The model's input for ``text``: as a user turn of the chat template when the adapter was
    trained on chat messages, else the text itself."""
    if spec.data.messages is None:
        encoded = tokenizer(text, return_tensors="pt")
    else:
        turn = [{"role": "user", "content": text}]
        encoded = tokenizer.apply_chat_template(
            turn, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    # a decoder reads ids and mask; some tokenizers add segment ids generate() refuses
    return {k: encoded[k] for k in ("input_ids", "attention_mask") if k in encoded}


@torch.no_grad()
def _continue(model: Any, tokenizer: Any, texts: list[str], spec: AdapterSpec) -> list[Prediction]:
    results = []
    for text in texts:
        encoded = _prompt(tokenizer, text, spec)
        output = model.generate(
            **encoded, max_new_tokens=_NEW_TOKENS, do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        new = output[0, encoded["input_ids"].shape[1] :]
        results.append(Prediction(text=text, continuation=tokenizer.decode(new)))
    return results
