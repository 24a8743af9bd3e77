"""``predict --out FILE``: answers written a line each as they come, the file in place only once
every text is answered, and a bad path refused before any work."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from flows import out_files
from flows.errors import DataError
from flows.predict_job import Answers, Prediction
from flows.prediction_files import check_predictions_path, write_predictions


def two_windows() -> Iterator[Answers]:
    """Two versions' answers to three texts, a window of two texts, then of one."""
    for first, texts in ((0, ["fine", 'say "hi", ok']), (2, ["dull\tand long"])):
        for ref, positive in (("a@1", 0.9), ("b@2", 0.2)):
            label = int(positive > 0.5)
            yield Answers(ref, first, [
                Prediction(text=t, label=label, label_name=["neg", "pos"][label],
                           probabilities=[round(1 - positive, 4), positive])
                for t in texts
            ])  # fmt: skip


def test_json_lines_name_each_texts_row_and_version(tmp_path):
    out = tmp_path / "answers.jsonl"
    heard: list[int] = []
    written = write_predictions(out, two_windows(), on_line=heard.append)
    assert written.to_dict() == {"out": str(out), "lines": 6, "refs": ["a@1", "b@2"]}
    assert heard == [2, 4, 5, 6]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["row"], line["ref"]) for line in lines] == [
        (0, "a@1"), (1, "a@1"), (0, "b@2"), (1, "b@2"), (2, "a@1"), (2, "b@2"),
    ]  # fmt: skip
    assert lines[3] == {
        "row": 1, "ref": "b@2", "text": 'say "hi", ok', "label": 0, "label_name": "neg",
        "probabilities": [0.8, 0.2],
    }  # fmt: skip


@pytest.mark.parametrize(("suffix", "delimiter"), [(".csv", ","), (".tsv", "\t")])
def test_a_table_has_a_header_and_quotes_what_needs_it(tmp_path, suffix, delimiter):
    out = tmp_path / f"answers{suffix}"
    write_predictions(out, two_windows())
    with out.open(newline="") as file:
        rows = list(csv.reader(file, delimiter=delimiter))
    assert rows[0] == ["row", "ref", "text", "label", "label_name", "probability", "probabilities"]
    assert rows[2] == ["1", "a@1", 'say "hi", ok', "1", "pos", "0.9", "[0.1, 0.9]"]
    assert rows[5] == ["2", "a@1", "dull\tand long", "1", "pos", "0.9", "[0.1, 0.9]"]
    assert len(rows) == 7


def test_pairs_tokens_and_continuations_take_their_own_columns(tmp_path):
    paired = [
        Answers("p@1", 0, [Prediction(text="a", pair="b", label=1, probabilities=[0.3, 0.7])])
    ]
    write_predictions(tmp_path / "pairs.csv", paired, with_pairs=True)
    assert (tmp_path / "pairs.csv").read_text().splitlines() == [
        "row,ref,text,pair,label,label_name,probability,probabilities",
        '0,p@1,a,b,1,,0.7,"[0.3, 0.7]"',
    ]
    masked = [Answers("m@1", 0, [Prediction(text="a [MASK].", tokens=["film", "movie"])])]
    write_predictions(tmp_path / "masks.csv", masked)
    assert (tmp_path / "masks.csv").read_text().splitlines()[
        1
    ] == '0,m@1,a [MASK].,"[""film"", ""movie""]"'
    generated = [Answers("g@1", 0, [Prediction(text="Q", continuation=" A\nB")])]
    write_predictions(tmp_path / "answers.tsv", generated)
    with (tmp_path / "answers.tsv").open(newline="") as file:
        assert list(csv.reader(file, delimiter="\t")) == [
            ["row", "ref", "text", "continuation"],
            ["0", "g@1", "Q", " A\nB"],
        ]


def test_a_run_that_fails_leaves_the_file_that_was_there_and_no_partial_one(tmp_path):
    out = tmp_path / "answers.jsonl"
    out.write_text("yesterday's answers\n")

    def failing() -> Iterator[Answers]:
        yield from list(two_windows())[:2]
        raise DataError("the mask of 'x' lies past the first 64 tokens")

    with pytest.raises(DataError, match="lies past"):
        write_predictions(out, failing())
    assert out.read_text() == "yesterday's answers\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl"]

    write_predictions(out, two_windows())  # --force: replaced once every answer is in
    assert len(out.read_text().splitlines()) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl"]


def test_bad_paths_are_refused_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "old.jsonl").write_text("kept\n")
    for out, says in (
        (tmp_path / "a.txt", "give a .jsonl, .csv or .tsv file (a line per answer)"),
        (tmp_path / "no" / "a.csv", f"folder {tmp_path / 'no'} does not exist; create it first"),
        (tmp_path / "old.jsonl", "exists: give --force to replace it, or another file name"),
    ):
        with pytest.raises(DataError) as refused:
            check_predictions_path(out, replace=False)
        assert str(refused.value) == f"--out {out}: {says}".replace(": exists", " exists")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError, match=r"dir.csv is a folder: give a file name in it"):
        check_predictions_path(tmp_path / "dir.csv", replace=True)
    check_predictions_path(tmp_path / "old.jsonl", replace=True)
    assert (tmp_path / "old.jsonl").read_text() == "kept\n"
    with pytest.raises(DataError, match=r"give a .jsonl, .csv or .tsv file"):
        write_predictions(tmp_path / "a.txt", two_windows())  # not a CSV named .txt
    assert not (tmp_path / "a.txt").exists()

    # The tests run as root, whom no permission stops, so os.access answers as for another
    # user: replacing a file means writing a new one beside it, so the folder must take it.
    monkeypatch.setattr(out_files.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(DataError, match=f"this user cannot write {tmp_path}; give a path"):
        check_predictions_path(tmp_path / "old.jsonl", replace=True)


def test_a_files_texts_are_read_a_slice_at_a_time_as_text(tmp_path, monkeypatch):
    """predict --data hands its windows slices of the file's column (read from the Arrow
    cache), never a list of every text; numbers in the column are texts too."""
    from flows.data import load_split
    from flows.predict_job import FileTexts

    file = tmp_path / "rows.csv"
    file.write_text("sentence,n\n" + "".join(f"text {i},{i}\n" for i in range(10)))
    rows = load_split(str(file), columns=["sentence", "n"])
    texts, numbers = FileTexts(rows["sentence"]), FileTexts(rows["n"])
    assert (len(texts), texts[0], texts[-1], texts[3:5]) == (
        10,
        "text 0",
        "text 9",
        ["text 3", "text 4"],
    )
    assert numbers[2:4] == ["2", "3"] and numbers[7] == "7"
    monkeypatch.setattr(FileTexts, "_READ_ROWS", 3)  # iteration crosses slices: 3, 3, 3, 1
    assert list(texts) == [f"text {i}" for i in range(10)]
    assert texts == [f"text {i}" for i in range(10)]
    assert texts not in (["text 0"], "text 0")


def test_lines_piped_to_text_dash_wait_in_a_temporary_file_not_a_list(monkeypatch):
    """``--text -`` reads standard input into a temporary file with each text's end, read back
    a slice at a time: any text (newlines, accents, ``\\r\\n`` endings) comes back as given,
    and 200,000 lines cost their offsets (1.7 MB), not a string each (20 MB as a list)."""
    import io
    import tracemalloc

    from flows.cli.options import input_texts
    from flows.text_sequences import SpooledTexts

    texts = SpooledTexts(["multi\nline", "", "café ☕", "last"])
    assert (len(texts), texts[0], texts[1], texts[-1], texts[1:3], texts[::2]) == (
        4,
        "multi\nline",
        "",
        "last",
        ["", "café ☕"],
        ["multi\nline", "café ☕"],
    )
    assert texts[3:1] == [] and texts[2:99] == ["café ☕", "last"]
    with pytest.raises(IndexError, match="text 4 of 4"):
        texts[4]

    monkeypatch.setattr("sys.stdin", io.StringIO("one\r\n\n  \ntwo\n"))
    given = input_texts(["first", "-", "after"])
    assert isinstance(given, SpooledTexts)
    assert given == ["first", "one", "two", "after"]
    assert input_texts(["a", "b"]) == ["a", "b"]  # no standard input: the values as they are
    monkeypatch.setattr("sys.stdin", io.StringIO("\n\n"))
    with pytest.raises(DataError, match="--text - read no line from standard input"):
        input_texts(["-"])
    monkeypatch.setattr("sys.stdin", io.StringIO("never read\n"))
    with pytest.raises(DataError, match=r"--text '' is empty \(an unset shell variable\?\)"):
        input_texts(["-", ""])  # refused before standard input is read
    assert sys.stdin.read() == "never read\n"
    # bytes that are not UTF-8 (a Latin-1 file piped in) reach Python as lone surrogates, which
    # the tokenizer refused with a TypeError traceback: one line naming where they are
    latin = io.TextIOWrapper(io.BytesIO(b"ok\n\nna\xefve\n"), errors="surrogateescape")
    monkeypatch.setattr("sys.stdin", latin)
    with pytest.raises(DataError) as raised:
        input_texts(["-"])
    assert str(raised.value) == (
        "line 3 of standard input is not UTF-8 text (byte 0xef): convert it to UTF-8 "
        "(`iconv -f latin1 -t utf-8` converts Latin-1)"
    )

    lines = "".join(f"a review of about forty characters, no {i}\n" for i in range(200_000))

    def held_after(read: Callable[[], Sequence[str]]) -> tuple[Sequence[str], int]:
        monkeypatch.setattr("sys.stdin", io.StringIO(lines))
        tracemalloc.start()
        try:
            return read(), tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()

    spooled, held = held_after(lambda: input_texts(["-"]))
    as_list, held_as_list = held_after(lambda: [line.rstrip("\r\n") for line in sys.stdin])
    assert len(spooled) == 200_000 and spooled[199_999] == as_list[-1]
    assert held < 2_500_000 and held_as_list > 15_000_000  # 1.7 MB and 20 MB, measured
