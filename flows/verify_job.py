"""``adapterops pull REF DIR --verify``: the files are the registered bytes (digests), and on the
spec's base model they still compute what they computed at registration (golden probes);
``adapterops db verify --probes``: the same for many versions (after an upgrade of torch or
transformers, or of a base model's folder, do they still compute what they did?)."""

from __future__ import annotations

import gc
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import peft_core as pc
from registry import AdapterVersion, BaseModelMismatchError, Registry

from .errors import BaseModelNotFound, DataError
from .files_spec import spec_from_files, stated_head
from .models import resolve_base_weights
from .spec import spec_of_version
from .train_job import inference_device, load_inference_model

__all__ = ["ProbeOutcome", "probe_versions", "verify_on_base"]


@dataclass(frozen=True)
class ProbeOutcome:
    """What one version's golden probes said on this machine's base model."""

    ref: str
    status: str  # "passed", "failed" or "not checked"
    detail: str  # the deviation, or why it failed or was not checked


def probe_versions(
    registry: Registry,
    refs: Sequence[str],
    *,
    on_version: Callable[[str, int], None] | None = None,
) -> list[ProbeOutcome]:
    """Each version of ``refs`` (whose files were verified whole) loaded onto its base model
    here and its golden probes re-run, as ``pull --verify`` does, one version at a time (each
    loads its base: a version's own head and load settings). A base model not on this machine,
    or a version without probes (a fusion, one registered before they existed), is "not
    checked"; a deviation beyond the band is "failed". ``on_version(ref, index)`` is told each
    before it loads."""
    outcomes = []
    for index, ref in enumerate(refs):
        if on_version is not None:
            on_version(ref, index)
        version = registry.get(ref)
        with tempfile.TemporaryDirectory(prefix="adapterops-probes-") as scratch:
            folder = registry.fetch(ref, Path(scratch) / "adapter")
            try:
                check = verify_on_base(version, folder)
            except BaseModelMismatchError as exc:
                outcomes.append(ProbeOutcome(ref, "failed", str(exc)))
            except (DataError, BaseModelNotFound) as exc:
                outcomes.append(ProbeOutcome(ref, "not checked", str(exc)))
            else:
                detail = (
                    f"deviation {check.deviation:.2%} (band {check.tolerance:.0%}; "
                    f"{check.precisions})"
                )
                outcomes.append(ProbeOutcome(ref, "passed", detail))
        gc.collect()  # the base model of this version, before the next one loads
    return outcomes


def verify_on_base(version: AdapterVersion, folder: Path) -> pc.ProbeCheck:
    """Load the adapter in ``folder`` onto ``version``'s base model and re-run its probes.

    A version registered without a spec (``adapterops import``, or pushed with its probes) is
    loaded with the head its files carry, as predict loads it (a trained classifier must load
    into a model with its head), or on its base model's body when they carry none: the probes
    read the body's hidden states, not a head. A quantised base is quantised as it loads, on
    the GPU when there is one."""
    kind, _, trained = stated_head(folder)
    if version.spec:
        model, _ = load_inference_model(spec_of_version(version, "pull --verify"))
    elif kind in ("causal-lm", "masked-lm") or (kind == "classification" and trained):
        model, _ = load_inference_model(spec_from_files(version, folder, "pull --verify"))
    else:
        from transformers import AutoModel  # noqa: PLC0415 - transformers is heavy

        # the probes are forward passes: on a GPU when there is one
        model = AutoModel.from_pretrained(resolve_base_weights(version.base_model))
        model = model.to(inference_device())
    pc.load_adapter(model, folder, name=version.name)
    check = pc.check_probes(model, version.name, folder)
    if check is None:
        raise DataError(
            f"{version.ref} has no golden probes (registered before they existed, or a fusion, "
            "whose outputs need its members): nothing to verify beyond the digests"
        )
    if not check.passed:
        raise BaseModelMismatchError(
            f"{version.ref} fails its golden probe {check.worst_probe} on {version.base_model}: "
            f"the outputs deviate {check.deviation:.1%} from those recorded at registration "
            f"(band {check.tolerance:.0%}; {check.precisions}); the base model here is not the "
            "one it was trained on"
        )
    return check
