"""Run a registered adapter on text: ``adapterops predict REF --text ...``.

Classification adapters return the label and its probabilities; masked-LM adapters the most
likely tokens for each mask; causal-LM adapters a greedy continuation.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

import peft_core as pc
from peft_core.offload import input_device
from registry import AdapterVersion, Composition, Registry
from registry.compositions import answers_per_member

from .data import chat_turns, load_split, require_columns
from .data_files import NOTHING_TO_PREDICT, check_text_sources
from .errors import DataError
from .evaluation import greedy_continuations
from .files_spec import SCORE_ON_A_FILE, serving_spec
from .members import members_of_version
from .shared_base import sharing_groups
from .spec import AdapterSpec, joined_prompt, parse_spec
from .text_sequences import Conversation, WindowedTexts
from .train_job import PhaseCallback, load_inference_model, load_registered, no_phases

__all__ = [
    "BATCH_ROWS",
    "NEW_TOKENS",
    "WINDOW_TEXTS",
    "Answers",
    "FileTexts",
    "Prediction",
    "ProgressCallback",
    "answer_texts",
    "answer_windows",
    "composition_stream",
    "gather_inputs",
    "inputs_from_file",
    "longest_first_order",
    "predict",
    "predict_composition",
    "predict_many",
    "predict_stream",
    "spec_of_composition",
]

_TOP_TOKENS = 5
NEW_TOKENS = 20  # a causal LM's continuation, unless max_new_tokens says otherwise
BATCH_ROWS = 32  # rows per forward pass by default: memory stays bounded on a file of texts
# Texts sorted and answered together before their answers are handed on: a stream holds this
# many answers at a time, however long the file (sorting within a window keeps nearly all of
# the padding saved by sorting the whole file, as its batches are 32 rows, not 4096).
WINDOW_TEXTS = 4096

ProgressCallback = Callable[[int, int], None]  # (texts answered so far, texts in all)


@dataclass
class Prediction:
    """One text's answer."""

    text: str
    pair: str = ""  # the second text, for an adapter that reads pairs (data.text_pair)
    label: int | None = None
    label_name: str = ""  # the spec's name for the label, when it names them
    probabilities: list[float] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # masked LM: top tokens of the first mask
    continuation: str = ""  # causal LM

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (empty fields dropped)."""
        return {k: v for k, v in asdict(self).items() if v not in (None, [], "")}


class Answers(NamedTuple):
    """A run of one version's answers from a stream: to texts ``first``, ``first + 1``, ..."""

    ref: str
    first: int
    predictions: list[Prediction]


def predict(
    registry: Registry,
    ref: str,
    texts: Sequence[str],
    *,
    pairs: Sequence[str] | None = None,
    skip_probe: bool = False,
    batch_size: int = BATCH_ROWS,
    max_new_tokens: int | None = None,
    on_progress: ProgressCallback | None = None,
    on_phase: PhaseCallback = no_phases,
) -> tuple[str, list[Prediction]]:
    """The version ``ref`` resolves to, and its prediction for each text (after its golden
    probes pass on this base model, unless ``skip_probe``), ``batch_size`` texts per forward
    pass (a causal LM: per generation, of at most ``max_new_tokens`` tokens, default
    :data:`NEW_TOKENS`); ``on_progress`` hears after each. An adapter trained on pairs of
    texts (``data.text_pair``) needs ``pairs``, the second text of each. ``on_phase`` hears
    what loads, then that the texts are answered."""
    (answered,) = predict_many(
        registry, [ref], texts, pairs=pairs, skip_probe=skip_probe, batch_size=batch_size,
        max_new_tokens=max_new_tokens, on_progress=on_progress, on_phase=on_phase,
    )  # fmt: skip
    return answered


def predict_composition(
    registry: Registry,
    ref: str,
    texts: Sequence[str],
    *,
    pairs: Sequence[str] | None = None,
    skip_probe: bool = False,
    batch_size: int = BATCH_ROWS,
    max_new_tokens: int | None = None,
    on_progress: ProgressCallback | None = None,
    on_phase: PhaseCallback = no_phases,
) -> tuple[str, list[Prediction]]:
    """The composition version ``ref`` resolves to (``pt-sst2@champion``), and its prediction for
    each text: every member loaded and checked, the composition active. The base model, head
    and label names come from the composition's evaluation spec, else from its last member's
    (the task adapter of a MAD-X stack). ``max_new_tokens`` and ``on_phase`` as
    :func:`predict`'s."""
    stream = composition_stream(
        registry, ref, texts, pairs=pairs, skip_probe=skip_probe, batch_size=batch_size,
        max_new_tokens=max_new_tokens, on_progress=on_progress, on_phase=on_phase,
    )  # fmt: skip
    ((ref, answers),) = _collected(stream, len(texts)).items()
    return ref, answers


def composition_stream(
    registry: Registry,
    ref: str,
    texts: Sequence[str],
    *,
    pairs: Sequence[str] | None = None,
    skip_probe: bool = False,
    batch_size: int = BATCH_ROWS,
    window: int = WINDOW_TEXTS,
    max_new_tokens: int | None = None,
    on_progress: ProgressCallback | None = None,
    on_phase: PhaseCallback = no_phases,
) -> Iterator[Answers]:
    """:func:`predict_composition`'s answers as they come, ``window`` texts at a time (in the
    texts' order), for a file too long to hold every answer."""
    composition = registry.composition(ref)
    if answers_per_member(composition.definition):
        raise DataError(
            f"{composition.ref} is a Parallel composition, which answers once per member: "
            "predict_many(registry, composition.members, texts) gives each member's answers "
            "side by side, in shared batches (as `adapterops composition predict` does)"
        )
    spec = spec_of_composition(registry, composition, "predict")
    _check_inputs(spec, composition.ref, texts, pairs)
    new_tokens = _new_tokens(max_new_tokens, spec, composition.ref)
    members = len(composition.members)
    on_phase(f"load the base model and the {members} members of {composition.ref}")
    model, tokenizer = load_inference_model(spec)
    registry.load_definition(
        model, composition.definition, composition.members, skip_probe=skip_probe
    )  # the version read above, not looked up again
    on_phase(_answering(texts))
    for first, (answers,) in answer_windows(
        model, tokenizer, texts, [spec], pairs=pairs, batch_size=batch_size, window=window,
        max_new_tokens=new_tokens, on_progress=on_progress,
    ):  # fmt: skip
        yield Answers(composition.ref, first, answers)


def spec_of_composition(
    registry: Registry, composition: Composition, command: str, *, scoring: bool = False
) -> AdapterSpec:
    """The spec that says which base model, head and label names a composition runs with: its
    evaluation spec, else its last member's (the task adapter of a MAD-X stack; one pushed
    without a spec answers from its files, but ``scoring`` needs the columns and metric a spec
    names)."""
    if composition.evaluation:
        return parse_spec(composition.evaluation, source=f"{composition.ref} evaluation")
    last = registry.get(composition.members[-1])
    if scoring and not last.spec:
        raise DataError(
            f"{composition.ref} was saved without --evaluation and its last member {last.ref} "
            f"without a spec, so {command} cannot tell which columns to read and how to score: "
            "save it again with `adapterops composition save ... --evaluation SPEC`, "
            f"{SCORE_ON_A_FILE}"
        )
    return serving_spec(registry, last, command)


def inputs_from_file(
    spec: AdapterSpec, path: str | Path, *, text_column: str | None = None
) -> tuple[Sequence[str], Sequence[str] | None]:
    """The texts (and, for an adapter trained on pairs, the second texts) in the columns of a
    TSV/CSV/JSON/Parquet file that ``spec`` reads (``data.text`` and ``data.text_pair``, an
    instruction adapter's ``data.prompt``, or a chat adapter's ``data.messages`` as
    :class:`Conversation` texts); ``text_column`` names another for the texts."""
    if spec.data.messages is not None:
        return _conversations_from_file(spec, path, text_column), None
    # an instruction adapter's prompts: its prompt column(s), joined as in training
    first = [text_column] if text_column else spec.data.prompt_columns or [spec.data.text]
    columns = [*first, *([spec.data.text_pair] if spec.data.text_pair else [])]
    rows = load_split(str(path), columns=columns)
    named = (
        "the texts from --text-column" if text_column else "its spec's data columns, or "
        "`sentence` for a version pushed without one; --text-column NAME takes the texts from "
        "another column"
    )  # fmt: skip
    require_columns(path, rows, columns, named=named)
    texts = FileTexts(*(rows[column] for column in first))
    pairs = FileTexts(rows[spec.data.text_pair]) if spec.data.text_pair else None
    return texts, pairs


def _conversations_from_file(spec: AdapterSpec, path: str | Path, column: str | None) -> ChatTexts:
    """The chats in a file's messages column (``column``, else the spec's ``data.messages``),
    each checked before any is answered: a row may end with the user's turn, or with the
    assistant's answer (a training or evaluation file), which is dropped and answered anew."""
    column = column or str(spec.data.messages)
    rows = load_split(str(path), columns=[column])
    named = (
        "the chats from --text-column" if column != spec.data.messages else "its spec's "
        "data.messages; --text-column NAME takes the chats from another column"
    )  # fmt: skip
    require_columns(path, rows, [column], named=named)
    chats = ChatTexts(rows[column], column, Path(path).name)
    for _ in chats:  # every row read once: a malformed one is said before any is answered
        pass
    return chats


class ChatTexts(WindowedTexts):
    """A data file's chat column as :class:`Conversation` texts to continue (in the chat
    template, as the adapter was trained), read a slice at a time like :class:`FileTexts`."""

    def __init__(self, chats: Sequence[Any], column: str, file_name: str) -> None:
        self._chats, self._column, self._file_name = chats, column, file_name

    def __len__(self) -> int:
        return len(self._chats)

    def _read(self, start: int, stop: int) -> list[str]:
        return [
            _to_answer(f"{self._file_name}, row {start + offset + 1}", self._column, turns)
            for offset, turns in enumerate(self._chats[start:stop])
        ]


def _to_answer(where: str, column: str, turns: Any) -> Conversation:
    """One file row's chat as a conversation ending with the user's turn: an assistant's
    answer last (the reference) is left out, since the model answers in its place."""
    conversation = chat_turns(where, column, turns)
    if conversation[-1]["role"] == "assistant":
        conversation = conversation[:-1]
    last = conversation[-1]["role"] if conversation else "nothing but the assistant's answer"
    if last != "user" or not str(conversation[-1]["content"] or "").strip():
        said = "an empty user turn" if last == "user" else repr(last)
        raise DataError(
            f"{where}: {column!r} ends with {said}; a chat to answer ends with the user's "
            "turn (or with the assistant's answer after it, which predict answers anew)"
        )
    return Conversation(conversation)


class FileTexts(WindowedTexts):
    """A data file's column as texts, read from the file's Arrow cache (memory-mapped) a slice
    at a time, as predict's windows ask for them: a file of millions of rows is never held as
    Python strings at once. Several columns (an instruction adapter's prompt columns) are
    joined row by row as its training joined them."""

    def __init__(self, *columns: Sequence[Any]) -> None:
        self._columns = columns

    def __len__(self) -> int:
        return len(self._columns[0])

    def _read(self, start: int, stop: int) -> list[str]:
        slices = [column[start:stop] for column in self._columns]
        return [joined_prompt(values) for values in zip(*slices, strict=True)]


def gather_inputs(
    registry: Registry,
    ref: str,
    texts: Sequence[str],
    data: str | Path | None,
    *,
    composition: bool = False,
    text_column: str | None = None,
) -> tuple[Sequence[str], Sequence[str] | None]:
    """What ``predict REF`` answers: the ``--text`` values, or the texts (and second texts) in
    the columns of the ``--data`` file that the version (or ``composition``) reads, the texts
    in ``text_column`` when given."""
    check_text_sources(texts, data, text_column)
    if data is None:
        return texts, None
    if composition:
        spec = spec_of_composition(registry, registry.composition(ref), "predict")
    else:
        spec = serving_spec(registry, registry.get(ref), "predict")
    return inputs_from_file(spec, data, text_column=text_column)


def _check_inputs(
    spec: AdapterSpec, ref: str, texts: Sequence[str], pairs: Sequence[str] | None
) -> None:
    """Texts to answer, paired when (and only when) the adapter reads pairs."""
    if not texts:
        raise DataError(NOTHING_TO_PREDICT)
    if spec.data.text_pair and pairs is None:
        raise DataError(
            f"{ref} reads pairs of texts ({spec.data.text}, {spec.data.text_pair}); one text "
            "alone would be answered as something it never saw: give --data FILE with both "
            "columns"
        )
    if pairs is not None and not spec.data.text_pair:
        raise DataError(f"{ref} reads single texts ({spec.data.text}), not pairs")
    if pairs is not None and len(pairs) != len(texts):
        raise DataError(f"{len(texts)} texts but {len(pairs)} second texts: give one per text")


def predict_many(
    registry: Registry,
    refs: list[str],
    texts: Sequence[str],
    *,
    pairs: Sequence[str] | None = None,
    skip_probe: bool = False,
    batch_size: int = BATCH_ROWS,
    max_new_tokens: int | None = None,
    on_progress: ProgressCallback | None = None,
    on_phase: PhaseCallback = no_phases,
) -> list[tuple[str, list[Prediction]]]:
    """Several versions on the same texts, in shared batches: each text takes a row per version
    and each row runs through its version (``peft_core.per_row``), ``batch_size`` rows per
    forward pass, over each base model and head they share (a base loads once for its
    versions; the texts must be read alike: single texts, pairs or chat messages). Stacks and
    fusions (versions over other adapters) are predicted one at a time. Versions peft runs
    (``type: peft``), whose layers take one adapter per batch and no native adapter beside it,
    answer as they do alone.
    ``on_progress`` hears per batch of each model loaded, from 0 again for each; ``on_phase``
    what loads before each; ``max_new_tokens`` as :func:`predict`'s."""
    versions = [registry.get(ref) for ref in refs]
    check_each_once(refs, versions)
    pinned = [version.ref for version in versions]  # name@N: the order to answer in
    stream = predict_stream(
        registry, pinned, texts, pairs=pairs, skip_probe=skip_probe, batch_size=batch_size,
        max_new_tokens=max_new_tokens, on_progress=on_progress, on_phase=on_phase,
    )  # fmt: skip
    gathered = _collected(stream, len(texts))
    return [(ref, gathered[ref]) for ref in pinned]


def predict_stream(
    registry: Registry,
    refs: list[str],
    texts: Sequence[str],
    *,
    pairs: Sequence[str] | None = None,
    skip_probe: bool = False,
    batch_size: int = BATCH_ROWS,
    window: int = WINDOW_TEXTS,
    max_new_tokens: int | None = None,
    on_progress: ProgressCallback | None = None,
    on_phase: PhaseCallback = no_phases,
) -> Iterator[Answers]:
    """:func:`predict_many`'s answers as they come, for a file too long to hold every answer:
    ``window`` texts at a time, in the texts' order, each window's answers of every version
    loaded together; the versions answered alone follow, one pass over the texts each."""
    if window < 1:
        raise DataError(f"the window must hold at least 1 text; got {window}")
    versions = [registry.get(ref) for ref in refs]
    check_each_once(refs, versions)
    specs = [serving_spec(registry, v, "predict") for v in versions]
    if len(versions) > 1:
        _check_together(versions, specs)
    _check_inputs(specs[0], versions[0].ref, texts, pairs)
    # --max-new-tokens is said to change nothing only when no version generates
    causal = next((i for i, spec in enumerate(specs) if spec.head.type == "causal-lm"), 0)
    new_tokens = _new_tokens(max_new_tokens, specs[causal], versions[causal].ref)
    options: dict[str, Any] = {
        "pairs": pairs, "batch_size": batch_size, "window": window, "on_progress": on_progress,
        "max_new_tokens": new_tokens,
    }  # fmt: skip
    groups = sharing_groups(versions, specs)
    for group in (g for g in groups if len(g) > 1):  # each base model loaded once for its own
        routed = [(versions[p], specs[p]) for p in group]
        yield from _in_shared_batches(
            registry, routed, texts, skip_probe=skip_probe, on_phase=on_phase, **options
        )
    for version, spec in ((versions[g[0]], specs[g[0]]) for g in groups if len(g) == 1):
        on_phase(f"load the base model and {version.ref}")
        model, tokenizer = load_registered(spec, version, registry, skip_probe=skip_probe)
        on_phase(_answering(texts))
        for first, (answers,) in answer_windows(model, tokenizer, texts, [spec], **options):
            yield Answers(version.ref, first, answers)
        del model  # freed before the next version's base model loads, not after


def check_each_once(refs: list[str], versions: list[AdapterVersion]) -> None:
    """Each version asked for once: its answers would come twice, under one name."""
    seen: dict[str, str] = {}
    for ref, version in zip(refs, versions, strict=True):
        if version.ref not in seen:
            seen[version.ref] = ref
            continue
        first = seen[version.ref]
        if first == ref:
            raise DataError(f"{ref} is given twice: give each version once")
        raise DataError(
            f"{first} and {ref} name the same version ({version.ref}): give each version once"
        )


def _new_tokens(asked: int | None, spec: AdapterSpec, ref: str) -> int:
    """How many tokens a causal LM's continuation may take: ``asked``, or :data:`NEW_TOKENS`.
    Asked of another head it changes nothing, which is said (a script passing it to every
    version should know)."""
    if asked is None:
        return NEW_TOKENS
    if isinstance(asked, bool) or not isinstance(asked, int) or asked < 1:
        raise DataError(f"max_new_tokens must be a whole number of at least 1; got {asked!r}")
    if spec.head.type != "causal-lm":
        warnings.warn(
            f"max_new_tokens (--max-new-tokens) changes nothing for {ref}: it sets the length "
            f"of a causal LM's continuation, and this is a {spec.head.type} adapter",
            RuntimeWarning,
            stacklevel=3,
        )
    return asked


def _collected(stream: Iterable[Answers], count: int) -> dict[str, list[Prediction]]:
    """A stream's answers gathered per version (``count`` each)."""
    gathered: dict[str, list[Prediction]] = {}
    for ref, _, answers in stream:
        gathered.setdefault(ref, []).extend(answers)  # a version's runs come in the texts' order
    assert all(len(answers) == count for answers in gathered.values()), "a text left unanswered"
    return gathered


def _in_shared_batches(
    registry: Registry,
    routed: list[tuple[AdapterVersion, AdapterSpec]],
    texts: Sequence[str],
    *,
    skip_probe: bool,
    on_phase: PhaseCallback,
    **options: Any,
) -> Iterator[Answers]:
    """Versions loaded into one model, each batch holding a row per version for each text."""
    specs = [spec for _, spec in routed]
    on_phase(f"load the base model and {len(routed)} versions")
    model, tokenizer = load_inference_model(specs[0])
    names = [f"{v.name}-v{v.version}" for v, _ in routed]  # two versions of one adapter coexist
    for (version, _), name in zip(routed, names, strict=True):
        registry.load_into(model, version.ref, name=name, skip_probe=skip_probe)
    on_phase(_answering(texts))
    for first, answers in answer_windows(model, tokenizer, texts, specs, adapters=names, **options):
        for (version, _), mine in zip(routed, answers, strict=True):
            yield Answers(version.ref, first, mine)


def _check_together(versions: list[AdapterVersion], specs: list[AdapterSpec]) -> None:
    """Versions answered side by side read the texts alike: single texts, pairs or chat
    messages, as the first does (their base models and heads may differ)."""
    first = specs[0]
    for version, spec in zip(versions, specs, strict=True):
        if members_of_version(version):
            raise DataError(
                f"{version.ref} runs over other adapters (a stack or fusion): predict it alone"
            )
        if _reads(spec) != _reads(first):
            raise DataError(
                f"{version.ref} reads {_reads(spec)} and {versions[0].ref} reads "
                f"{_reads(first)}: predict them apart, each on its own inputs"
            )


def _reads(spec: AdapterSpec) -> str:
    if spec.data.messages is not None:
        return "chat messages"
    return "pairs of texts" if spec.data.text_pair else "single texts"


def answer_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    specs: list[AdapterSpec],
    *,
    pairs: Sequence[str] | None = None,
    batch_size: int,
    on_progress: ProgressCallback | None = None,
    adapters: list[str] | None = None,
    max_new_tokens: int = NEW_TOKENS,
) -> list[list[Prediction]]:
    """Every text answered once per spec, a list per spec: :func:`answer_windows` over all the
    texts at once."""
    answers: list[list[Prediction]] = [[] for _ in specs]
    for _, window in answer_windows(
        model, tokenizer, texts, specs, pairs=pairs, batch_size=batch_size,
        window=max(1, len(texts)), on_progress=on_progress, adapters=adapters,
        max_new_tokens=max_new_tokens,
    ):  # fmt: skip
        for mine, found in zip(answers, window, strict=True):
            mine.extend(found)
    return answers


def answer_windows(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    specs: list[AdapterSpec],
    *,
    pairs: Sequence[str] | None = None,
    batch_size: int,
    window: int = WINDOW_TEXTS,
    on_progress: ProgressCallback | None = None,
    adapters: list[str] | None = None,
    max_new_tokens: int = NEW_TOKENS,
) -> Iterator[tuple[int, list[list[Prediction]]]]:
    """The loop behind every predict: ``window`` texts at a time, each answered once per spec,
    yielded as (the window's first text, a list per spec). With ``adapters`` (one per spec,
    loaded in ``model``), the answer for spec ``i`` runs through ``adapters[i]``; without, the
    model answers as it is set up (one spec). ``pairs``: each text's second text (a classifier
    trained on pairs). A batch holds ``batch_size`` rows, and at least one text's; texts of
    like lengths share a batch (:func:`longest_first_order` within the window), the answers
    keep the texts' order. ``on_progress`` hears the texts answered so far after each batch.
    A causal LM continues each text by at most ``max_new_tokens`` tokens."""
    if batch_size < 1:
        raise DataError(f"the batch size must be at least 1; got {batch_size}")
    if specs[0].head.type == "masked-lm":
        _check_masks(tokenizer, texts)  # every text, before the first window is answered
    if specs[0].head.type == "causal-lm":
        _check_room(model, tokenizer, texts, specs[0], max_new_tokens)  # likewise
    per_batch = max(1, batch_size // len(specs))
    model.eval()
    for first in range(0, len(texts), window):
        held = list(texts[first : first + window])  # a file's: read from its cache now
        held_pairs = list(pairs[first : first + window]) if pairs is not None else None
        order = longest_first_order(held, held_pairs)
        answers: list[dict[int, Prediction]] = [{} for _ in specs]  # text index -> its answer
        for start in range(0, len(held), per_batch):
            taken = order[start : start + per_batch]
            chunk = [held[i] for i in taken]
            seconds = [held_pairs[i] for i in taken] if held_pairs is not None else None
            rows = [name for _ in chunk for name in adapters] if adapters else None
            # auto: gather on a CPU and in float32; Triton's kernel for a half-precision prefill
            # on a GPU (where it cost one adapter's time; gather 1.4x)
            routing = pc.per_row(model, rows, kernel="auto") if rows else nullcontext()
            with torch.no_grad(), routing:
                predictions = _answer_chunk(
                    model, tokenizer, chunk, specs, seconds, max_new_tokens=max_new_tokens
                )
            for row, prediction in enumerate(predictions):
                answers[row % len(specs)][taken[row // len(specs)]] = prediction
            if on_progress is not None:
                on_progress(first + start + len(chunk), len(texts))
        yield first, [[mine[i] for i in range(len(held))] for mine in answers]


def _answering(texts: Sequence[str]) -> str:
    return f"answer {len(texts)} text{'s' if len(texts) != 1 else ''}"


def longest_first_order(texts: list[str], pairs: list[str] | None = None) -> list[int]:
    """The texts' indices, longest first (in characters, with their second texts; ties keep
    their order). Each text's answer does not depend on its batch mates, so batching texts of
    like lengths only saves padding: 1.5x as fast over SST-2's ragged sentences on CPU
    (``bench.scoring_order_bench``). The answers go back to the texts' own order."""
    seconds = pairs if pairs is not None else [""] * len(texts)
    lengths = [len(text) + len(second) for text, second in zip(texts, seconds, strict=True)]
    return sorted(range(len(texts)), key=lambda index: -lengths[index])


def _answer_chunk(
    model: Any,
    tokenizer: Any,
    chunk: list[str],
    specs: list[AdapterSpec],
    seconds: list[str] | None = None,
    *,
    max_new_tokens: int = NEW_TOKENS,
) -> list[Prediction]:
    """Each text of ``chunk`` (with its second text) answered once per spec in one batch: row
    ``t * len(specs) + i`` is text ``t`` as ``specs[i]`` answers it (its adapter routed by the
    caller)."""
    rows = [text for text in chunk for _ in specs]
    head = specs[0].head.type
    if head == "causal-lm":
        return _continue(model, tokenizer, rows, specs[0], max_new_tokens)
    if head == "masked-lm":
        return _fill_masks(model, tokenizer, rows, specs[0])
    row_pairs = [second for second in seconds for _ in specs] if seconds is not None else None
    predictions = _classify(model, tokenizer, rows, specs[0], row_pairs)
    for prediction, spec in zip(predictions, specs * len(chunk), strict=True):
        names = spec.head.label_names or []  # each version names its own labels
        prediction.label_name = names[prediction.label or 0] if names else ""
    return predictions


def _on(model: Any, encoded: Any) -> dict[str, Any]:
    """The tokenizer's tensors on the model's device."""
    device = input_device(model)  # (an offloaded first layer's weights wait on meta)
    return {key: value.to(device) for key, value in encoded.items()}


def _encode(
    tokenizer: Any, texts: list[str], spec: AdapterSpec, pairs: list[str] | None = None
) -> Any:
    """``texts`` (with their ``pairs``) as one padded batch, cut at the length the adapter was
    trained on."""
    return tokenizer(
        texts, pairs, padding=True, truncation=True, max_length=spec.train.max_length,
        return_tensors="pt",
    )  # fmt: skip


def _classify(
    model: Any, tokenizer: Any, texts: list[str], spec: AdapterSpec, pairs: list[str] | None
) -> list[Prediction]:
    encoded = _encode(tokenizer, texts, spec, pairs)
    probabilities = model(**_on(model, encoded)).logits.softmax(-1).cpu()  # (texts, labels)
    labels = [int(p.argmax()) for p in probabilities]
    seconds = pairs if pairs is not None else [""] * len(texts)
    return [
        Prediction(text=t, pair=second, label=label, probabilities=[round(float(x), 4) for x in p])
        for t, second, p, label in zip(texts, seconds, probabilities, labels, strict=True)
    ]


def _check_masks(tokenizer: Any, texts: Iterable[str]) -> None:
    mask = tokenizer.mask_token
    missing = next((t for t in texts if mask not in t), None)  # the first one
    if missing is not None:
        raise DataError(f"a masked-LM adapter fills {mask}: put it in each text ({missing!r})")


def _check_room(
    model: Any, tokenizer: Any, texts: Iterable[str], spec: AdapterSpec, new_tokens: int
) -> None:
    """Every prompt and its continuation fit the base model's learned positions (GPT-2: 1,024);
    one token past them was an IndexError deep inside generate. A rotary base has no such
    table: longer inputs run (and degrade), as they would anywhere."""
    limit = pc.position_limit(model)
    if limit is None:
        return
    if new_tokens >= limit:
        raise DataError(
            f"max_new_tokens (--max-new-tokens) {new_tokens} leaves no room for a prompt in the "
            f"{limit:,} positions the base model holds: give fewer than {limit:,}"
        )
    for number, text in enumerate(texts, start=1):
        length = len(_prompt(tokenizer, text, spec))
        if length + new_tokens - 1 > limit:  # the last new token is never read back
            raise DataError(
                f"text {number} ({str(text)[:40]!r}) is {length:,} tokens: with {new_tokens} "
                f"new tokens it passes the {limit:,} positions the base model holds; shorten it "
                f"to at most {limit - new_tokens + 1:,} tokens, or lower max_new_tokens "
                "(--max-new-tokens)"
            )


def _fill_masks(
    model: Any, tokenizer: Any, texts: list[str], spec: AdapterSpec
) -> list[Prediction]:
    """The top tokens for the first mask of each text."""
    encoded = _encode(tokenizer, texts, spec)
    is_mask = encoded["input_ids"] == tokenizer.mask_token_id
    for text, found in zip(texts, is_mask.any(dim=1).tolist(), strict=True):
        if not found:
            raise DataError(
                f"the mask of {text[:60]!r} lies past the first {spec.train.max_length} tokens the "
                "adapter reads (train.max_length): put it earlier or shorten the text"
            )
    positions = is_mask.int().argmax(dim=1)  # the first mask of each row
    logits = model(**_on(model, encoded)).logits.cpu()
    top = logits[torch.arange(len(texts)), positions].topk(_TOP_TOKENS).indices  # (texts, k)
    return [
        Prediction(text=text, tokens=[tokenizer.decode([i]).strip() for i in row])
        for text, row in zip(texts, top.tolist(), strict=True)
    ]


def _prompt(tokenizer: Any, text: str, spec: AdapterSpec) -> Tensor:
    """The model's input ids for ``text``: as a user turn of the chat template when the adapter
    was trained on chat messages, else the text itself."""
    if spec.data.messages is None:
        return tokenizer(text, return_tensors="pt")["input_ids"][0]
    # a file's chat with the turns before it; --text's a user turn alone
    turns = text.turns if isinstance(text, Conversation) else [{"role": "user", "content": text}]
    encoded = tokenizer.apply_chat_template(
        turns, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    return encoded["input_ids"][0]


def _continue(
    model: Any, tokenizer: Any, texts: list[str], spec: AdapterSpec, new_tokens: int = NEW_TOKENS
) -> list[Prediction]:
    """Greedy continuations of ``texts`` in one batch, of at most ``new_tokens`` tokens, each
    cut after its first end token (as generating it alone stops there)."""
    device = input_device(model)
    prompts = [_prompt(tokenizer, text, spec).to(device) for text in texts]
    generated = greedy_continuations(model, prompts, new_tokens, tokenizer.pad_token_id)
    ends = model.generation_config.eos_token_id
    ends = set(ends if isinstance(ends, list) else [] if ends is None else [ends])
    answers = []
    for text, row in zip(texts, generated, strict=True):
        tokens = row.tolist()
        stop = next((i + 1 for i, token in enumerate(tokens) if token in ends), len(tokens))
        answers.append(Prediction(text=str(text), continuation=tokenizer.decode(tokens[:stop])))
    return answers
