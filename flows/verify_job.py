"""``adapterops pull REF DIR --verify``: the files are the registered bytes (digests), and on the
spec's base model they still compute what they computed at registration (golden probes)."""

from __future__ import annotations

from pathlib import Path

import peft_core as pc
from registry import AdapterVersion, BaseModelMismatchError

from .errors import DataError
from .files_spec import spec_from_files, stated_head
from .models import resolve_base_weights
from .spec import spec_of_version
from .train_job import inference_device, load_inference_model

__all__ = ["verify_on_base"]


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
