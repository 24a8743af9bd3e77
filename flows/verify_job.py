"""``adapterops pull REF DIR --verify``: the files are the registered bytes (digests), and on the
spec's base model they still compute what they computed at registration (golden probes);
``adapterops db verify --probes``: the same for many versions (after an upgrade of torch or
transformers, or of a base model's folder, do they still compute what they did?)."""

from __future__ import annotations

import gc
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peft_core as pc
from registry import AdapterVersion, BaseModelMismatchError, CorruptArtifactError, Registry

from .errors import BaseModelNotFound, DataError
from .files_spec import spec_from_files, stated_head
from .models import resolve_base_weights
from .shared_base import sharing_groups
from .spec import AdapterSpec, SpecError, spec_of_version
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
    on_phase: Callable[[str], None] | None = None,
    whole: set[str] | None = None,
) -> list[ProbeOutcome]:
    """Each version of ``refs`` loaded onto its base model here and its golden probes re-run,
    as ``pull --verify`` does; the outcomes in ``refs``' order. Versions built from a spec on
    one base model, head and load settings share one load of it: each is loaded beside it,
    probed and taken out again (a 7B base loads once, not once per adapter). A full
    fine-tune, an adapter peft places, a fusion and a version pushed without a spec load a
    model of their own. A base model not on this machine, or a version without probes (a
    fusion, one registered before they existed; found before any base loads), is "not
    checked"; a deviation beyond the band, or a base of another architecture than the one it
    was trained on, is "failed". ``on_version(ref, index)`` is told each version before its
    probes run, ``on_phase`` each base model before it loads.

    With ``whole`` (``db verify --probes``, whose digest check comes after), a version whose
    files are damaged or missing has no outcome (the digest check names its files), and each
    version downloaded whole is added to ``whole``: a download checks every digest, so its
    files need not be read again. Without, such a version raises
    :class:`~registry.CorruptArtifactError`."""
    versions = [registry.get(ref) for ref in refs]
    outcomes: dict[str, ProbeOutcome] = {}
    told = 0  # versions told to on_version so far
    with tempfile.TemporaryDirectory(prefix="adapterops-probes-") as scratch:
        for spec, group in _sharing_a_model(versions):
            probed = _ProbedGroup(registry, spec, Path(scratch), on_phase or (lambda _: None))
            for version in group:
                if on_version is not None:  # in the order they are probed: group by group
                    on_version(version.ref, told)
                    told += 1
                try:
                    outcomes[version.ref] = probed.outcome(version)
                except CorruptArtifactError:
                    if whole is None:
                        raise
                    continue
                if whole is not None:
                    whole.add(version.ref)
            probed.close()
    return [outcomes[version.ref] for version in versions if version.ref in outcomes]


def _sharing_a_model(
    versions: Sequence[AdapterVersion],
) -> list[tuple[AdapterSpec | None, list[AdapterVersion]]]:
    """``versions`` in groups that share one loaded base model, each with the spec that loads
    it; a version alone in its group gets None and loads its own (:func:`verify_on_base`)."""
    specs = [_readable_spec(version) for version in versions]
    return [
        (specs[group[0]] if len(group) > 1 else None, [versions[p] for p in group])
        for group in sharing_groups(versions, specs)
    ]


def _readable_spec(version: AdapterVersion) -> AdapterSpec | None:
    """The spec ``version`` was built with; None for one pushed without a spec, or whose spec
    this code cannot read (its own outcome, loading alone, says why)."""
    if not version.spec:
        return None
    try:
        return spec_of_version(version, "db verify --probes")
    except SpecError:
        return None


class _ProbedGroup:
    """One group's versions probed in turn on one base model, loaded at the first version that
    has probes (with ``spec``; None: each version loads its own, :func:`verify_on_base`)."""

    def __init__(
        self,
        registry: Registry,
        spec: AdapterSpec | None,
        scratch: Path,
        on_phase: Callable[[str], None],
    ) -> None:
        self._registry, self._spec, self._scratch = registry, spec, scratch
        self._on_phase = on_phase
        self._model: Any = None
        self._unloadable: Exception | None = None  # the base's load failed: none is checked

    def outcome(self, version: AdapterVersion) -> ProbeOutcome:
        """``version``'s probes run, as an outcome (never raises for the version's fault)."""
        folder = self._registry.fetch(version.ref, self._scratch / f"{version.ref}-files")
        try:
            if not (folder / pc.probes.PROBES_FILE).is_file():  # said before any base loads
                return ProbeOutcome(version.ref, "not checked", _no_probes(version))
            return _passed(version, self._check(version, folder))
        except (BaseModelMismatchError, pc.BaseModelMismatchError, pc.ProbeMismatchError) as exc:
            if isinstance(exc, pc.probes.UnreadableProbesError):
                return ProbeOutcome(version.ref, "not checked", f"{version.ref}: {exc}")
            return ProbeOutcome(version.ref, "failed", str(exc))
        except (DataError, BaseModelNotFound, SpecError, pc.PeftCoreError) as exc:
            return ProbeOutcome(version.ref, "not checked", str(exc))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _check(self, version: AdapterVersion, folder: Path) -> pc.ProbeCheck:
        if self._spec is None:
            self._on_phase(f"load the base model of {version.ref}")
            try:
                return verify_on_base(version, folder)
            finally:
                gc.collect()  # this version's base model, before the next one loads
        if self._unloadable is not None:
            raise self._unloadable
        if self._model is None:
            self._on_phase(f"load the base model {self._spec.base_model}")
            try:
                self._model, _ = load_inference_model(self._spec)
            except (DataError, BaseModelNotFound) as exc:
                self._unloadable = exc
                raise
        name = f"{version.name}-v{version.version}"  # two versions of one adapter may be here
        pc.load_adapter(self._model, folder, name=name)
        try:
            return _probes_passed(self._model, name, folder, version)
        finally:
            pc.delete_adapter(self._model, name)  # the base as it loaded, for the next version

    def close(self) -> None:
        """The group's base model let go, before the next group's loads."""
        self._model = None
        gc.collect()


def _passed(version: AdapterVersion, check: pc.ProbeCheck) -> ProbeOutcome:
    detail = f"deviation {check.deviation:.2%} (band {check.tolerance:.0%}; {check.precisions})"
    return ProbeOutcome(version.ref, "passed", detail)


def _no_probes(version: AdapterVersion) -> str:
    return (
        f"{version.ref} has no golden probes (registered before they existed, or a fusion, "
        "whose outputs need its members): nothing to verify beyond the digests"
    )


def _probes_passed(model: Any, name: str, folder: Path, version: AdapterVersion) -> pc.ProbeCheck:
    """The probes of adapter ``name`` (``version``'s files in ``folder``) re-run on ``model``;
    outputs beyond the band are :class:`BaseModelMismatchError`."""
    check = pc.check_probes(model, name, folder)
    if check is None:
        raise DataError(_no_probes(version))
    if not check.passed:
        raise BaseModelMismatchError(
            f"{version.ref} fails its golden probe {check.worst_probe} on {version.base_model}: "
            f"the outputs deviate {check.deviation:.1%} from those recorded at registration "
            f"(band {check.tolerance:.0%}; {check.precisions}); the base model here is not the "
            "one it was trained on"
        )
    return check


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
    return _probes_passed(model, version.name, folder, version)
