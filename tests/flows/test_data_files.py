"""Data files users get wrong: each is one line that says what is wrong, before any training."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from flows.data import DataError, load_raw, load_split
from flows.spec import load_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minilm-sst2-en-lora.yaml"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.tsv", "", "is empty"),
        ("header.tsv", "sentence\tlabel\n", "cannot read {file}: it has a header but no rows"),
        (
            "commas.tsv",
            'sentence,label\n"good",1\n',
            "{file} reads as one column 'sentence,label': it looks comma-separated, which .tsv "
            "is not; name it .csv",
        ),
        (
            "tabs.csv",
            "sentence\tlabel\ngood\t1\n",
            "it looks tab-separated, which .csv is not; name it .tsv",
        ),
        (
            "broken.jsonl",
            '{"sentence": "a", "label": 1}\n{bad json\n',
            "cannot read {file}: JSON parse error: Missing a name for object member",
        ),
        (
            "table.xlsx",
            "x",
            "data file {file} is a .xlsx file: give a .tsv, .csv, .json, .jsonl or .parquet file",
        ),
        (
            "table",
            "x",
            "data file {file} is a file without a suffix: give a .tsv, .csv, .json, .jsonl or "
            ".parquet file",
        ),
    ],
)
def test_a_malformed_file_is_one_line_that_says_why(tmp_path, caplog, name, content, message):
    file = tmp_path / name
    file.write_text(content)
    with caplog.at_level(logging.ERROR), pytest.raises(DataError) as raised:
        load_split(str(file))
    assert message.format(file=file) in str(raised.value)
    assert "\n" not in str(raised.value)
    assert [r for r in caplog.records if r.name.startswith("datasets")] == []  # said once


@pytest.mark.parametrize(
    ("name", "row"), [("latin.tsv", b"na\xefve\t1"), ("latin.csv", b"na\xefve,1")]
)
def test_a_file_that_is_not_utf8_is_said_as_such(tmp_path, name, row):
    """A Latin-1 export (a spreadsheet's default) was "'utf-8' codec can't decode byte 0xef in
    position 2: invalid continuation byte": a codec's words, a position within a chunk."""
    file = tmp_path / name
    header = b"sentence\tlabel\n" if name.endswith(".tsv") else b"sentence,label\n"
    file.write_bytes(header + row + b"\n")
    with pytest.raises(DataError) as raised:
        load_split(str(file))
    assert str(raised.value) == (
        f"cannot read {file}: it is not UTF-8 text (byte 0xef: invalid continuation byte): save "
        "it as UTF-8 (`iconv -f latin1 -t utf-8 FILE > NEW` converts a Latin-1 file)"
    )


@pytest.mark.parametrize("name", ["latin.jsonl", "latin.json"])
def test_json_lines_that_are_not_utf8_name_the_line(tmp_path, name):
    """Arrow's JSON reader took the bytes as they were: the first row read raised a
    UnicodeDecodeError traceback, after the model had loaded."""
    file = tmp_path / name
    file.write_bytes(b'{"sentence": "fine", "label": 1}\n{"sentence": "na\xefve", "label": 1}\n')
    with pytest.raises(DataError) as raised:
        load_split(str(file))
    assert str(raised.value) == (
        f"cannot read {file}: line 2 is not UTF-8 text (byte 0xef: invalid continuation byte): "
        "save it as UTF-8 (`iconv -f latin1 -t utf-8 FILE > NEW` converts a Latin-1 file)"
    )
    file.write_bytes(b'{"sentence": "na\xc3\xafve", "label": 1}\n')  # the same, as UTF-8
    assert load_split(str(file))["sentence"] == ["na\u00efve"]


def test_a_folder_is_not_a_data_file(tmp_path):
    with pytest.raises(DataError, match=r"is a folder: name a file \(\.tsv, \.csv, \.json"):
        load_split(str(tmp_path))


def test_a_dataset_that_cannot_be_loaded_says_what_would_be(tmp_path):
    """An empty folder was told "Offline, only datasets in the local Hugging Face cache or
    local folders can be read": it is a local folder; what it lacks is data files. (The
    tests run offline: conftest sets HF_HUB_OFFLINE.)"""

    def loading(dataset: str) -> str:
        spec = load_spec(
            EXAMPLE, ["data.train=null", "data.validation=null", f"data.dataset={dataset}"]
        )
        with pytest.raises(DataError) as raised:
            load_raw(spec)
        return str(raised.value)

    told = loading(str(tmp_path))
    assert told.startswith(f"cannot load dataset '{tmp_path}': ")
    assert told.endswith(
        "; give a folder of data files (csv, json, parquet, ...) or one "
        "DatasetDict.save_to_disk wrote"
    )
    told = loading("stanfordnlp/sst2")
    assert told.startswith("cannot load dataset 'stanfordnlp/sst2': ")
    assert told.endswith(
        "; offline, only datasets in the local Hugging Face cache or local folders can be read"
    )


def _spec_reading(train: Path, *overrides: str):
    return load_spec(EXAMPLE, [f"data.train={train}", f"data.validation={train}", *overrides])


def test_labels_written_as_their_names_become_their_numbers(tmp_path):
    """A file exported with positive/negative needs no rewriting; numbers among the words (one
    word makes the whole column text) stay numbers."""
    (tmp_path / "train.tsv").write_text(
        "sentence\tlabel\ngood\tpositive\nbad\t negative\nfine\t1\nawful\t0\n"
    )
    train, validation = load_raw(_spec_reading(tmp_path / "train.tsv"))
    assert train["label"] == [1, 0, 1, 0] and validation["label"] == [1, 0, 1, 0]
    assert train.features["label"].dtype == "int64"


@pytest.mark.parametrize("validation", ["a file, a seeded subset", "held out of train"])
def test_numbered_rows_keep_their_place_in_the_file_and_their_order(tmp_path, validation):
    """What ``evaluate --out`` writes beside each answer: the row's place in its file (0 for
    the first data row), through a subset or a split held out of train, with the rows in the
    order the tokenised split has them."""
    from flows.data import FILE_ROW

    sentences = [f"sentence number {row}" for row in range(40)]
    (tmp_path / "train.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"{s}\t{row % 2}\n" for row, s in enumerate(sentences))
    )
    if validation == "held out of train":
        spec = load_spec(EXAMPLE, [f"data.train={tmp_path / 'train.tsv'}", "data.validation=null"])
        assert spec.data.validation is None
    else:
        spec = _spec_reading(tmp_path / "train.tsv", "data.max_eval_samples=12")
    _, plain = load_raw(spec)
    _, numbered = load_raw(spec, numbered=True)
    assert numbered["sentence"] == plain["sentence"]  # the same rows, in the same order
    assert len(plain) == (4 if validation == "held out of train" else 12)
    assert [sentences[row] for row in numbered[FILE_ROW]] == numbered["sentence"]
    assert numbered[FILE_ROW] != sorted(numbered[FILE_ROW])  # drawn shuffled, numbered still
    assert FILE_ROW not in plain.column_names


def test_labels_a_spreadsheet_wrote_as_whole_floats_are_their_classes(tmp_path):
    """1.0 was 'outside 0..1'; 0.5 still is."""
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood\t1.0\nbad\t0.0\nfine\t1\n")
    train, _ = load_raw(_spec_reading(tmp_path / "train.tsv"))
    assert train["label"] == [1, 0, 1] and train.features["label"].dtype == "int64"
    (tmp_path / "half.tsv").write_text("sentence\tlabel\ngood\t1.0\nbad\t0.5\n")
    with pytest.raises(DataError) as raised:
        load_raw(_spec_reading(tmp_path / "half.tsv"))
    assert str(raised.value) == (
        "train split: label values ['0.5'] are outside 0..1 (head.num_labels = 2)"
    )


def test_a_word_in_the_label_column_is_named(tmp_path):
    """One word makes the whole column text: the numbers were called 'outside 0..1' too."""
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\tnegtive\n")
    with pytest.raises(DataError) as raised:
        load_raw(_spec_reading(tmp_path / "train.tsv"))
    assert str(raised.value) == (
        "train split: label(s) ['negtive'] in the 'label' column are not among "
        "head.label_names ['negative', 'positive']: write each label as one of those names "
        "(or as its number 0..1)"
    )
    unnamed = _spec_reading(tmp_path / "train.tsv", "head={type: classification, num_labels: 2}")
    with pytest.raises(DataError) as raised:
        load_raw(unnamed)
    assert str(raised.value) == (
        "train split: the 'label' column holds text (['negtive']); labels are the integers "
        "0..1 (head.num_labels = 2), or words named in head.label_names"
    )


def test_a_class_the_data_never_shows_is_said_once(tmp_path):
    """The build checks its inputs, then its prepare task reads them again, under Prefect's own
    warning filters (the warning came twice)."""
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    spec = load_spec(
        EXAMPLE,
        [
            f"data.train={tmp_path / 'train.tsv'}",
            f"data.validation={tmp_path / 'train.tsv'}",
            "head.label_names=[negative, positive, neutral]",
            f"name=said-once-{tmp_path.name}",
        ],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # what a fresh filter does: every call would warn
        load_raw(spec)
        load_raw(spec)
    assert [str(w.message) for w in caught] == [
        "the train split has no example of label 2 ('neutral') (the head has 3): the adapter "
        "will never predict it; check head.label_names (or num_labels) and data.max_train_samples"
    ]


def test_an_empty_cell_in_a_column_read_names_its_rows(tmp_path):
    """An empty text was read as the word 'None' (and predicted on); an empty label turned the
    labels into floats, all called 'outside 0..1'. Rows are the file's, even where a subset is
    drawn (max_train_samples); a column the adapter does not read may have holes."""
    (tmp_path / "train.tsv").write_text(
        "sentence\tlabel\tnote\ngood\t1\t\n\t0\tx\nbad\t\tx\nfine\t1\tx\n\t0\tx\n"
    )
    spec = _spec_reading(tmp_path / "train.tsv", "data.max_train_samples=2")
    with pytest.raises(DataError) as raised:
        load_raw(spec)
    assert str(raised.value) == (
        f"{tmp_path / 'train.tsv'}: 2 row(s) have no 'sentence' (rows 2, 5; the first data row "
        "is 1): fill those cells in or remove the rows"
    )
    (tmp_path / "labels.tsv").write_text("sentence\tlabel\tnote\ngood\t1\t\nbad\t\tx\n")
    with pytest.raises(DataError) as raised:
        load_raw(_spec_reading(tmp_path / "labels.tsv"))
    assert str(raised.value) == (
        f"{tmp_path / 'labels.tsv'}: 1 row(s) have no 'label' (row 2; the first data row is "
        "1): fill those cells in or remove the rows"
    )
    (tmp_path / "notes.tsv").write_text("sentence\tlabel\tnote\ngood\t1\t\nbad\t0\tx\n")
    train, _ = load_raw(_spec_reading(tmp_path / "notes.tsv"))
    assert train["sentence"] == ["good", "bad"]


def test_a_blank_column_name_is_said_before_any_file_is_read(tmp_path):
    """From Python, ``evaluate_version(..., text_column="")`` (a script's unset variable)
    ended in a KeyError; the command line refuses it before it runs."""
    from flows.data_files import check_scoring_sources, check_text_sources

    file = tmp_path / "rows.tsv"
    file.write_text("sentence\tlabel\na\t1\n")
    with pytest.raises(DataError, match=r"^--label-column ' ' names no column: give the col"):
        check_scoring_sources(file, "sentence", " ")
    with pytest.raises(DataError, match=r"^--text-column '' names no column"):
        check_text_sources([], file, "")
    check_scoring_sources(file, "sentence", "label")  # named: read later, as before
