"""``adapterops predict REF --data FILE``: the texts in the columns the version's spec reads,
pairs of texts included (an adapter trained on ``data.text_pair`` is never fed one text alone)."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from flows.build_job import build_from_spec
from flows.errors import DataError
from flows.predict_job import predict
from flows.quickstart import minilm_sst2_spec
from registry import Registry
from tests.helpers import minilm_path, run_cli


def pairs_file(sst2_dir: Path, folder: Path, rows: int) -> Path:
    """SST-2 sentences paired with the next one; the label is the first one's."""
    lines = (sst2_dir / "en" / "train.tsv").read_text().splitlines()[1 : rows + 2]
    cells = [line.split("\t") for line in lines]
    body = [f"{a[0]}\t{b[0]}\t{a[1]}" for a, b in itertools.pairwise(cells)]
    path = folder / "pairs.tsv"
    path.write_text("sentence\tsecond\tlabel\n" + "\n".join(body) + "\n")
    return path


@pytest.fixture
def paired(embedded_home, sst2_dir, tmp_path) -> tuple[str, Path]:
    file = pairs_file(sst2_dir, tmp_path, 64)
    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=2, name="paired-sst2")
    data = spec.data.model_copy(
        update={"train": str(file), "validation": str(file), "text_pair": "second"}
    )
    spec = spec.model_copy(update={"data": data})
    return build_from_spec(spec, Registry(), tmp_path / "out").ref, file


def test_pairs_come_from_the_file_and_one_text_alone_is_refused(paired):
    import torch
    import transformers as T

    ref, file = paired
    with pytest.raises(DataError, match=r"paired-sst2@1 reads pairs of texts \(sentence, second\)"):
        predict(Registry(), ref, ["a fine film"])

    done = run_cli("predict", ref, "--data", str(file), "--json", env={**os.environ})
    assert done.returncode == 0, done.stderr[-2000:]
    answers = json.loads(done.stdout)["predictions"]
    rows = [line.split("\t") for line in file.read_text().splitlines()[1:]]
    assert [(a["text"], a["pair"]) for a in answers] == [(r[0], r[1]) for r in rows]

    model = T.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    Registry().load_into(model, ref)
    tokenizer = T.AutoTokenizer.from_pretrained(minilm_path())
    firsts, seconds = [r[0] for r in rows[:4]], [r[1] for r in rows[:4]]
    encoded = tokenizer(firsts, seconds, padding=True, truncation=True, max_length=64, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        expected = model.eval()(**encoded).logits.softmax(-1)
    got = torch.tensor([a["probabilities"] for a in answers[:4]])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_bad_inputs_are_one_line_before_any_model_loads(paired, tmp_path):
    ref, file = paired
    env = {**os.environ}
    other = tmp_path / "other.tsv"
    other.write_text("review\tlabel\na fine film\t1\n")
    holes = tmp_path / "holes.tsv"  # an empty second text was answered as the word 'None'
    holes.write_text("sentence\tsecond\na\tb\nc\t\n")
    for arguments, says in (
        (["--data", str(holes)], f"{holes}: 1 row(s) have no 'second' (row 2; the first data"),
        (["--text", "x", "--data", str(file)], "give --text or --data, not both"),
        ([], "nothing to predict: give --text TEXT"),
        (["--data", str(other)], "has no column(s) ['sentence', 'second']"),
        (["--data", str(tmp_path / "nowhere.tsv")], "does not exist"),
        (["--text", "x", "--text-column", "review"], "--text-column names a column of the --data"),
        (["--text", "x", "--text", " "], "--text ' ' is empty (an unset shell variable?)"),
    ):
        refused = run_cli("predict", ref, *arguments, env=env)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert says in refused.stderr and "Traceback" not in refused.stderr
