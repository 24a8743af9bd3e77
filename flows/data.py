"""Loading, checking and batching examples for training and evaluation.

Data comes from local TSV/CSV/JSON/Parquet files (read with ``datasets``). Every problem a user can
cause (a missing file, a missing column, labels outside ``num_labels``, an empty split) is a
:class:`DataError` raised before training starts.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import (
    DataCollatorForLanguageModeling,
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
)

from .data_files import DATA_SUFFIXES, check_data_file
from .errors import DataError
from .spec import AdapterSpec

__all__ = [
    "FILE_ROW",
    "DataError",
    "PreparedData",
    "chat_turns",
    "load_raw",
    "load_split",
    "longest_first",
    "longest_first_order",
    "make_loader",
    "prepare",
    "prepare_file",
    "read_file",
    "require_columns",
    "require_values",
    "tokenize",
]

_BUILDERS = {".tsv": "csv", ".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
assert tuple(_BUILDERS) == DATA_SUFFIXES  # the light check and the loader read the same files


@dataclass
class PreparedData:
    """Tokenised train and validation splits, ready for :func:`make_loader`."""

    train: datasets.Dataset
    validation: datasets.Dataset
    head: str


FILE_ROW = "__adapterops_file_row__"  # a row's place in its file (0: the first data row)


def load_split(
    path: str,
    *,
    max_samples: int | None = None,
    seed: int = 0,
    columns: Iterable[str] = (),
    numbered: bool = False,
) -> datasets.Dataset:
    """Read one split from a local file; ``max_samples`` takes a seeded random subset. The
    ``columns`` an adapter reads may have no empty cells. ``numbered``: each row keeps its
    place in the file in the column ``FILE_ROW`` (a subset's rows are shuffled)."""
    file = check_data_file(path)
    builder = _BUILDERS[file.suffix]
    options: dict[str, Any] = {"delimiter": "\t", "quoting": 3} if file.suffix == ".tsv" else {}
    if builder == "json":
        _check_utf8_lines(file)
    try:
        # datasets logs each failure before raising it: our one line says it, with the cause
        with _datasets_logging(logging.CRITICAL):
            dataset = datasets.load_dataset(builder, data_files=str(file), split="train", **options)
    except Exception as exc:  # datasets raises many types for malformed files
        raise DataError(f"cannot read {file}: {_root_cause(exc)}") from exc
    if len(dataset) == 0:
        raise DataError(f"{file} has no rows")
    _check_delimiter(file, dataset)
    require_values(str(file), dataset, columns)
    if numbered:
        dataset = dataset.add_column(FILE_ROW, list(range(len(dataset))))
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.shuffle(seed=seed).select(range(max_samples))
    return dataset


@contextmanager
def _datasets_logging(level: int) -> Iterator[None]:
    before = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(level)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(before)


def _check_utf8_lines(file: Path) -> None:
    """JSON Lines that are not UTF-8: Arrow's JSON reader takes their bytes as they are, and
    the first row read failed with a ``UnicodeDecodeError`` traceback, after the model loaded
    (the CSV reader checks, and :func:`_root_cause` says it)."""
    with file.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"cannot read {file}: line {number} {_not_utf8(exc)}") from None


def _not_utf8(exc: UnicodeDecodeError) -> str:
    """What to say of text that is not UTF-8, and how to convert it."""
    return (
        f"is not UTF-8 text (byte {exc.object[exc.start]:#04x}: {exc.reason}): save it "
        "as UTF-8 (`iconv -f latin1 -t utf-8 FILE > NEW` converts a Latin-1 file)"
    )


def _root_cause(exc: BaseException) -> str:
    """datasets wraps the parser's error ("JSON parse error: ... in row 1") in a generic one
    ("An error occurred while generating the dataset"); the innermost says what is wrong."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, UnicodeDecodeError):  # (its position counts within a chunk, not the file)
        return f"it {_not_utf8(exc)}"
    text = " ".join(str(exc).split())
    if "corresponds to no data" in text:  # datasets' words for a header without rows
        return "it has a header but no rows"
    return text


def _check_delimiter(file: Path, dataset: datasets.Dataset) -> None:
    """A comma-separated file named .tsv (or the reverse) reads as one column named after the
    whole header line."""
    columns = dataset.column_names
    other = {".tsv": ",", ".csv": "\t"}.get(file.suffix)
    if other and len(columns) == 1 and other in columns[0]:
        separated = "comma" if other == "," else "tab"
        meant = ".csv" if other == "," else ".tsv"
        raise DataError(
            f"{file} reads as one column {columns[0]!r}: it looks {separated}-separated, which "
            f"{file.suffix} is not; name it {meant}"
        )


def load_raw(
    spec: AdapterSpec, *, numbered: bool = False
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The untokenised train and validation splits, checked (columns, labels, emptiness), in
    the order :func:`prepare` tokenises them. ``numbered``: each row keeps its place in its
    file or split in ``FILE_ROW`` (a validation split held out of train: its train rows)."""
    data = spec.data
    seed = spec.train.seed
    if data.dataset is not None:
        train, validation = _from_dataset_id(spec, numbered=numbered)
    else:
        assert data.train is not None  # the spec guarantees one source
        wanted = _wanted_columns(spec)
        train = load_split(
            data.train, max_samples=data.max_train_samples, seed=seed, columns=wanted,
            numbered=numbered,
        )  # fmt: skip
        validation = None
        if data.validation is not None:
            validation = load_split(
                data.validation, max_samples=data.max_eval_samples, seed=seed, columns=wanted,
                numbered=numbered,
            )  # fmt: skip
    if validation is None:  # no validation split: hold out 10% of train
        if len(train) < 2:
            raise DataError("the train split has fewer than 2 rows: nothing to hold out")
        split = train.train_test_split(test_size=0.1, seed=seed)
        train, validation = split["train"], split["test"]
    train = _checked_split(spec, train, "train")
    validation = _checked_split(spec, validation, "validation")
    return train, validation


def prepare(spec: AdapterSpec, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    """Load, check and tokenise the spec's train and validation splits."""
    train, validation = load_raw(spec)
    return PreparedData(
        train=tokenize(train, spec, tokenizer),
        validation=tokenize(validation, spec, tokenizer),
        head=spec.head.type,
    )


def prepare_file(
    spec: AdapterSpec,
    path: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_samples: int | None = None,
    named: str = "its spec's data section",
) -> datasets.Dataset:
    """A local file read with ``spec``'s columns and tokenised as its validation split is (what
    ``adapterops evaluate --data`` scores). A file without those columns is refused, naming
    them (``named``: where those names come from): a registered spec's columns cannot change,
    the file's can."""
    rows = read_file(spec, path, max_samples=max_samples, named=named)
    return tokenize(rows, spec, tokenizer)


def read_file(
    spec: AdapterSpec,
    path: str | Path,
    *,
    max_samples: int | None = None,
    named: str = "its spec's data section",
) -> datasets.Dataset:
    """The rows of a local file :func:`prepare_file` tokenises, in the same order, checked as
    it checks them (labels written as names turned into numbers), each with its place in the
    file in ``FILE_ROW``: what ``evaluate --out`` writes beside each row's answer."""
    dataset = load_split(
        str(path), max_samples=max_samples, seed=spec.train.seed, columns=_wanted_columns(spec),
        numbered=True,
    )  # fmt: skip
    require_columns(path, dataset, _wanted_columns(spec), named=named)
    return _checked_split(spec, dataset, Path(path).name)


def require_columns(
    path: str | Path,
    dataset: datasets.Dataset,
    wanted: list[str],
    *,
    named: str = "its spec's data section",
) -> None:
    """A file given to a registered adapter must hold the columns its spec reads: the spec
    cannot change, the file can, so the error names both sides (``named``: where the wanted
    names come from, or how to name others)."""
    missing = [c for c in wanted if c not in dataset.column_names]
    if missing:
        columns = [c for c in dataset.column_names if c != FILE_ROW]
        raise DataError(
            f"{path} has no column(s) {missing}; its columns are {columns}. The "
            f"adapter reads {wanted} ({named}): give a file with them"
        )


def require_values(where: str, dataset: datasets.Dataset, columns: Iterable[str]) -> None:
    """Refuse empty cells in the ``columns`` an adapter reads (those ``dataset`` has; a missing
    column is named elsewhere, with the spec's fields), ``where`` naming the file or split: a
    missing text would be read as the word ``None``, a missing label turns the column into
    floats. Checked before a subset is drawn, so the rows named are the file's."""
    for column in (c for c in columns if c in dataset.column_names):
        values = dataset.with_format("arrow")[column]  # no copy of the texts
        if values.null_count:
            rows = [row + 1 for row, empty in enumerate(values.is_null().to_pylist()) if empty]
            listed = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
            which = f"rows {listed}" if len(rows) > 1 else f"row {listed}"
            raise DataError(
                f"{where}: {len(rows)} row(s) have no {column!r} ({which}; the first data row is "
                "1): fill those cells in or remove the rows"
            )


def _from_dataset_id(
    spec: AdapterSpec, *, numbered: bool = False
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Splits of a Hugging Face datasets id (from the local cache when offline) or local folder
    (``numbered``: as :func:`load_split`'s)."""
    data = spec.data
    try:
        loaded = datasets.load_dataset(data.dataset, data.subset)
    except Exception as exc:  # network, missing cache, bad folder: all one message for users
        reason = " ".join(str(exc).split())[:300].rstrip(".")
        hint = (  # a folder here is not reached over the network: the hub's words would mislead
            "give a folder of data files (csv, json, parquet, ...) or one "
            "DatasetDict.save_to_disk wrote"
            if Path(str(data.dataset)).is_dir()
            else "offline, only datasets in the local Hugging Face cache or local folders can "
            "be read"
        )
        raise DataError(
            f"cannot load dataset {data.dataset!r}"
            f"{f' (subset {data.subset!r})' if data.subset else ''}: {reason}; {hint}"
        ) from None
    splits = list(loaded)
    wanted = [data.train_split, *([data.validation_split] if data.validation_split else [])]
    missing = [s for s in wanted if s not in loaded]
    if missing:
        raise DataError(
            f"dataset {data.dataset!r} has no split(s) {missing}; its splits are {splits}. "
            "Set data.train_split / data.validation_split (or validation_split: null)."
        )
    seed = spec.train.seed

    def take(split: str, limit: int | None) -> datasets.Dataset:
        dataset = loaded[split]
        if len(dataset) == 0:
            raise DataError(f"dataset {data.dataset!r}: split {split!r} has no rows")
        require_values(f"dataset {data.dataset!r}, split {split!r}", dataset, _wanted_columns(spec))
        if numbered:
            dataset = dataset.add_column(FILE_ROW, list(range(len(dataset))))
        if limit is not None and limit < len(dataset):
            dataset = dataset.shuffle(seed=seed).select(range(limit))
        return dataset

    train = take(data.train_split, data.max_train_samples)
    if data.validation_split is None:
        return train, None
    return train, take(data.validation_split, data.max_eval_samples)


def make_loader(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    head: str,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    packing: bool = False,
) -> DataLoader[Any]:
    """Batches padded to their longest row (dynamic padding keeps CPU steps short).

    ``packing`` (causal LMs): each batch is one row of its examples end to end, with position ids
    restarting per example; transformers then keeps attention inside each example (a
    block-diagonal mask, or flash attention's variable-length path), so no compute goes to padding.
    """
    collator: Any
    if packing:
        if head != "causal-lm":
            raise ValueError(f"packing is for causal-lm heads, not {head}")
        # labels: the instructions' own (prompt -100), else the inputs; -100 between examples
        collator = DataCollatorWithFlattening(return_position_ids=True)
    elif head == "masked-lm":
        # evaluation (no shuffling) masks the same tokens every time, or a perplexity that
        # gates promotion moves by chance; training masks from the global generator, which a
        # checkpoint saves and restores (a resumed run masks what an unbroken one does)
        collator = DataCollatorForLanguageModeling(
            tokenizer, mlm=True, mlm_probability=0.15, seed=None if shuffle else seed
        )
    elif head == "causal-lm" and "labels" in dataset.column_names:  # instructions: own labels
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    elif head == "causal-lm":
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    else:
        collator = DataCollatorWithPadding(tokenizer)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collator,
        generator=generator,
    )


def longest_first(dataset: datasets.Dataset) -> datasets.Dataset:
    """``dataset``'s rows ordered by token count, longest first (ties keep their order).

    For scoring where the order of rows does not matter (a confusion matrix, a loss summed
    over tokens): batches of similar lengths pad little, which nearly halves MiniLM's time on
    SST-2's validation split (ragged sentences of 4 to 55 tokens, batches of 64;
    ``bench.scoring_order_bench``), and the longest batch runs first, so one that does not fit
    in memory fails at once rather than at the end.
    """
    return dataset.select(longest_first_order(dataset))


def longest_first_order(dataset: datasets.Dataset) -> list[int]:
    """The row numbers :func:`longest_first` puts ``dataset``'s rows in."""
    lengths = [len(ids) for ids in dataset["input_ids"]]
    return sorted(range(len(lengths)), key=lambda row: -lengths[row])


def _wanted_columns(spec: AdapterSpec) -> list[str]:
    """The columns ``spec`` reads: its text (and pair) and label, or its instruction columns."""
    data = spec.data
    if data.instructions:
        return [c for c in (*data.prompt_columns, data.response, data.messages) if c]
    wanted = [c for c in (data.text, data.text_pair) if c]
    if spec.head.type == "classification" and data.label:
        wanted.append(data.label)
    return wanted


# a response column's names in common instruction data sets, beside a `prompt` column
_RESPONSE_NAMES = ("response", "completion", "output", "answer", "chosen")


def _columns_advice(spec: AdapterSpec, columns: list[str]) -> str:
    """What to set in the spec to read a file with ``columns`` (after a column was missing):
    for a causal LM, the fields of the instruction layout the columns look like."""
    if spec.head.type == "classification":
        return "Set data.text / data.label in the spec."
    if spec.head.type == "masked-lm":
        return "Set data.text in the spec."
    present = set(columns)
    if {"instruction", "output"} <= present:
        prompt = "[instruction, input]" if "input" in present else "instruction"
        return f"These are Alpaca's columns: set data.prompt: {prompt} and data.response: output."
    for chat in ("messages", "conversations"):
        if chat in present:
            return f"For its chat turns set data.messages: {chat}."
    answer = next((name for name in _RESPONSE_NAMES if name in present), None)
    if "prompt" in present and answer:
        return f"For instructions set data.prompt: prompt and data.response: {answer}."
    return (
        "Set data.text (plain text), data.prompt and data.response (instructions), or "
        "data.messages (chat) in the spec."
    )


def _checked_split(spec: AdapterSpec, dataset: datasets.Dataset, split: str) -> datasets.Dataset:
    """``dataset`` checked against what ``spec`` reads (columns, labels), with labels written as
    ``head.label_names`` turned into their numbers."""
    data = spec.data
    if data.instructions:
        return _checked_instructions(spec, dataset, split)
    wanted = _wanted_columns(spec)
    missing = [c for c in wanted if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"{_named(split)} has no column(s) {missing}; its columns are {dataset.column_names}. "
            f"{_columns_advice(spec, dataset.column_names)}"
        )
    if spec.head.type == "classification" and data.label:
        dataset = _numbered_labels(spec, dataset, split)
        num_labels = spec.head.num_labels or 0
        labels = {_whole(x) for x in dataset[data.label]}
        bad = sorted(str(x) for x in labels if not isinstance(x, int) or not 0 <= x < num_labels)
        if bad:
            raise DataError(
                f"{_named(split)}: label values {bad[:5]} are outside 0..{num_labels - 1} "
                f"(head.num_labels = {num_labels})"
            )
        if dataset.features[data.label].dtype.startswith("float"):  # 1.0, 0.0: whole, above
            dataset = dataset.cast_column(data.label, datasets.Value("int64"))
        if split == "train":
            _warn_of_unseen_labels(spec, labels)
    return dataset


def _named(split: str) -> str:
    """How a message names the rows it checks: ``train split``, or a file's name (``evaluate
    --data``)."""
    return f"{split} split" if split in ("train", "validation") else split


def _row_numbers(dataset: datasets.Dataset) -> list[int]:
    """Each row's number as a person counts them: its place in its file (a ``--max-samples``
    draw is shuffled), else in the split."""
    if FILE_ROW in dataset.column_names:
        return [place + 1 for place in dataset[FILE_ROW]]
    return list(range(1, len(dataset) + 1))


def _whole(label: Any) -> Any:
    """A class a spreadsheet's export wrote as ``1.0`` as its number ``1``; anything else as is."""
    return int(label) if isinstance(label, float) and label.is_integer() else label


def _numbered_labels(spec: AdapterSpec, dataset: datasets.Dataset, split: str) -> datasets.Dataset:
    """A label column of words: each must be one of ``head.label_names`` (a file exported with
    ``positive``/``negative`` needs no rewriting), and becomes its number. Numbers pass as
    they are; a column mixing both reads as words (one word makes a CSV column text)."""
    column, names = spec.data.label, spec.head.label_names
    assert column is not None  # a classification spec reads a label column
    values = set(dataset[column])
    words = sorted(str(x) for x in values if isinstance(x, str) and not x.strip().isdigit())
    if not words:
        return dataset
    num_labels = spec.head.num_labels or 0
    if not names:
        raise DataError(
            f"{_named(split)}: the {column!r} column holds text ({words[:5]}); labels are the "
            f"integers 0..{num_labels - 1} (head.num_labels = {num_labels}), or words named "
            "in head.label_names"
        )
    unknown = sorted({word.strip() for word in words} - set(names))
    if unknown:
        raise DataError(
            f"{_named(split)}: label(s) {unknown[:5]} in the {column!r} column are not among "
            f"head.label_names {list(names)}: write each label as one of those names (or as "
            f"its number 0..{num_labels - 1})"
        )
    number = {name: index for index, name in enumerate(names)}

    def numbered(value: Any) -> int:
        text = str(value).strip()
        return int(text) if text.isdigit() else number[text]

    return dataset.map(
        lambda batch: {column: [numbered(x) for x in batch[column]]},
        batched=True,
        features=datasets.Features({**dataset.features, column: datasets.Value("int64")}),
    )


_WARNED: set[tuple[str, tuple[str, ...]]] = set()


def _warn_of_unseen_labels(spec: AdapterSpec, seen: set[Any]) -> None:
    """A class the training data never shows is one the adapter never learns to predict: most
    often a wrong ``head.label_names``/``num_labels``, or a ``max_train_samples`` too small."""
    names = spec.head.label_names
    unseen = [
        f"{label} ({names[label]!r})" if names else str(label)
        for label in range(spec.head.num_labels or 0)
        if label not in seen
    ]
    if unseen and (spec.name, tuple(unseen)) not in _WARNED:
        # once per process: the build checks its inputs, then its prepare task reads them again
        # (Prefect runs tasks with their own warning filters, which would say it twice)
        _WARNED.add((spec.name, tuple(unseen)))
        label, it = ("label", "it") if len(unseen) == 1 else ("labels", "them")
        warnings.warn(
            f"the train split has no example of {label} {', '.join(unseen)} (the head has "
            f"{spec.head.num_labels}): the adapter will never predict {it}; check "
            "head.label_names (or num_labels) and data.max_train_samples",
            RuntimeWarning,
            stacklevel=2,
        )


# ShareGPT's speakers ({"from": "human", "value": ...}, as axolotl and many chat data sets
# write turns) as the roles chat templates read
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "tool": "tool",
}


def _checked_instructions(
    spec: AdapterSpec, dataset: datasets.Dataset, split: str
) -> datasets.Dataset:
    """``dataset`` checked as instruction data; chat turns written ShareGPT's way
    (``{from, value}``) come back as ``{role, content}``."""
    data = spec.data
    missing = [c for c in _wanted_columns(spec) if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"{_named(split)} has no column(s) {missing}; its columns are {dataset.column_names}. "
            f"{_columns_advice(spec, dataset.column_names)}"
        )
    numbers = _row_numbers(dataset)
    if data.messages is None:
        for number, response in zip(numbers, dataset[data.response], strict=True):
            if not str(response or "").strip():
                raise DataError(
                    f"{_named(split)}, row {number}: the response is empty (nothing to learn from)"
                )
        return dataset
    column = data.messages
    written_by_speaker = False
    for number, turns in zip(numbers, dataset[column], strict=True):
        conversation = _conversation(f"{_named(split)}, row {number}", column, turns)
        written_by_speaker = written_by_speaker or conversation != turns
    if not written_by_speaker:
        return dataset
    return dataset.map(lambda example: {column: _conversation("", column, example[column])})


def _conversation(where: str, column: str, turns: Any) -> list[dict[str, Any]]:
    """One row's chat turns as ``{role, content}`` dicts, refused (naming the row) when they
    are not a list of turns ending with the assistant's answer."""
    conversation = chat_turns(where, column, turns)
    last = conversation[-1]
    if last["role"] != "assistant" or not str(last["content"] or "").strip():
        said = "empty" if last["role"] == "assistant" else f"a {last['role']!r} message"
        raise DataError(
            f"{where}: the last message must be a non-empty assistant answer, not {said}"
        )
    return conversation


def chat_turns(where: str, column: str, turns: Any) -> list[dict[str, Any]]:
    """One row's chat turns as ``{role, content}`` dicts (ShareGPT's ``{from, value}`` read as
    the roles they stand for), refused (naming ``where``) when they are not a list of turns."""
    shape = f"{column!r} must be a list of {{role, content}} (or ShareGPT's {{from, value}})"
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        raise DataError(f"{where}: {shape}")
    conversation = []
    for turn in turns:
        if turn.get("role") is not None and "content" in turn:
            conversation.append(turn)  # as written: a template may read more than these two
        elif turn.get("from") is not None and "value" in turn:
            role = SHAREGPT_ROLES.get(str(turn["from"]))
            if role is None:
                raise DataError(
                    f"{where}: a turn from {turn['from']!r}; ShareGPT's speakers are "
                    f"{', '.join(SHAREGPT_ROLES)}"
                )
            conversation.append({"role": role, "content": turn["value"]})
        else:
            raise DataError(f"{where}: {shape}")
    return conversation


def tokenize(
    dataset: datasets.Dataset, spec: AdapterSpec, tokenizer: PreTrainedTokenizerBase
) -> datasets.Dataset:
    """``dataset``'s rows as ``spec``'s model reads them (its other columns dropped)."""
    data = spec.data
    if data.instructions:
        return _tokenize_instructions(dataset, spec, tokenizer)

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts: Iterable[Any] = [str(t) for t in batch[data.text]]
        pairs = [str(t) for t in batch[data.text_pair]] if data.text_pair else None
        encoded: dict[str, Any] = dict(
            tokenizer(texts, pairs, truncation=True, max_length=spec.train.max_length)
        )
        if spec.head.type == "classification" and data.label:
            encoded["labels"] = batch[data.label]
        return encoded

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names)


def _tokenize_instructions(
    dataset: datasets.Dataset, spec: AdapterSpec, tokenizer: PreTrainedTokenizerBase
) -> datasets.Dataset:
    """Prompt then response (+ end of sequence); labels -100 on the prompt, so the loss (and
    the perplexity evaluation reports) covers the response alone."""
    data, limit = spec.data, spec.train.max_length
    if data.messages is not None and not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"data.messages needs a chat template, and the tokenizer of {spec.base_model} has "
            "none: use data.prompt / data.response, or a base model that ships one"
        )

    def encode(example: dict[str, Any]) -> dict[str, Any]:
        if data.messages is not None:
            messages = example[data.messages]
            prompt = tokenizer.apply_chat_template(
                messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=False
            )
            whole = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
            response = list(whole[len(prompt) :])
        else:
            assert data.response is not None  # the spec requires it beside data.prompt
            prompt = tokenizer(data.prompt_text(example))["input_ids"]
            answer = tokenizer(str(example[data.response]), add_special_tokens=False)
            end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
            response = [*answer["input_ids"], *end]  # the model learns to stop
        prompt = list(prompt)
        if len(prompt) >= limit:
            raise DataError(
                f"a prompt of {len(prompt)} tokens leaves no room for its response within "
                f"train.max_length {limit}: raise max_length or shorten the prompt"
            )
        ids = (prompt + response)[:limit]
        labels = ([-100] * len(prompt) + response)[:limit]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    return dataset.map(encode, remove_columns=dataset.column_names)
