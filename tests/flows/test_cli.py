"""The ``adapterops`` CLI, run as a user runs it: a real subprocess of the installed script."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import (
    empty_registry,
    home_with_fake_adapters,
    run_cli,
    run_cli_in_a_terminal,
    run_cli_noting_imports,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minilm-sst2-en-lora.yaml"


def example_document() -> dict:
    """The example spec as a document to change and write elsewhere: its data files (relative
    to examples/) made absolute, since train and build check them before anything else."""
    document = yaml.safe_load(EXAMPLE.read_text())
    for split in ("train", "validation"):
        document["data"][split] = str((EXAMPLE.parent / document["data"][split]).resolve())
    return document


def adapterops(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd)


EMPTY = "'' is empty (an unset shell variable?): give"
NOT_UTF8 = "is not UTF-8 text (each byte that is not shows as \ufffd): type it in UTF-8"


class TestPlan:
    def test_json_output(self):
        result = adapterops("plan", str(EXAMPLE), "--json")
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert set(data) == {
            "trainable_params",
            "total_params",
            "trainable_fraction",
            "adapter_bytes",
            "base_bytes",
            "training_bytes",
            "step",
        }
        assert data["trainable_params"] == 74_498
        assert data["adapter_bytes"] == 4 * 74_498
        assert data["training_bytes"] == 16 * 74_498  # float32 weight, gradient, two moments
        frozen = data["total_params"] - data["trainable_params"]
        assert data["base_bytes"] == 4 * frozen  # load.dtype auto: float32 on this CPU
        step = data["step"]  # the example's train.batch_size x train.max_length
        assert (step["batch_size"], step["sequence_length"]) == (32, 64)
        assert step["weights_bytes"] == data["base_bytes"] + data["training_bytes"] // 4
        assert step["peak_bytes"] == step["weights_bytes"] + step["step_bytes"]
        assert 200 * 2**20 < step["step_bytes"] < 800 * 2**20  # 2,048 tokens in float32
        nf4 = adapterops(
            "plan", str(EXAMPLE), "--json", "--no-step", "--set", "load.dtype=bf16",
            "--set", "load.quantization=nf4",
        )  # fmt: skip
        assert nf4.returncode == 0, nf4.stderr
        # MiniLM in bf16 with its Linear weights in NF4 (~0.52 bytes each): a third of float32's
        assert (
            0.3 * data["base_bytes"]
            < json.loads(nf4.stdout)["base_bytes"]
            < 0.4 * data["base_bytes"]
        )

    def test_processes_under_fsdp_give_one_processes_figure(self, tmp_path):
        import transformers as T

        T.LlamaConfig(
            hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1000,
        ).save_pretrained(tmp_path / "llama")  # fmt: skip
        spec = tmp_path / "llama.yaml"
        spec.write_text(
            f"name: llama-full\nbase_model: {tmp_path / 'llama'}\nhead: {{type: causal-lm}}\n"
            "method: {type: full}\nload: {dtype: bf16}\n"
            "train: {batch_size: 2, max_length: 64}\n"
        )

        def step(*options: str) -> dict:
            result = adapterops("plan", str(spec), "--json", *options)
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)["step"]

        whole = step()
        ddp = step("--processes", "4")  # DDP (the default): a whole model in each process
        assert ddp == whole and whole["processes"] == 1 and whole["gathered_bytes"] == 0
        fsdp = step("--processes", "4", "--set", "train.sharding=fsdp")
        assert fsdp["processes"] == 4 and fsdp["gathered_bytes"] > 0
        # a quarter of every weight (padded), and a quarter of AdamW's moments of all of them
        quarter = whole["weights_bytes"] / 4
        assert quarter <= fsdp["weights_bytes"] < quarter * 1.01
        assert fsdp["peak_bytes"] < 0.75 * whole["peak_bytes"]  # 0.68 at these shapes
        table = adapterops(  # --processes defaults to the spec's train.processes
            "plan", str(spec), "--set", "train.processes=4", "--set", "train.sharding=fsdp"
        )
        assert table.returncode == 0, table.stderr
        assert "step peak per process" in table.stdout and "one of 4 (FSDP)" in table.stdout
        refused = adapterops("plan", str(spec), "--processes", "0")
        assert refused.returncode == 2 and "--processes" in refused.stderr
        too_many = adapterops("plan", str(spec), "--processes", str(10**20))  # was: a plan
        assert too_many.returncode == 2 and too_many.stderr.startswith(
            "error: Invalid value for '--processes': Input should be less than or equal to 1024."
        ), too_many.stderr

    def test_gpus_say_where_evaluation_would_put_the_base(self, tmp_path):
        import transformers as T

        T.LlamaConfig(  # a 70B Llama: config.json only
            hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
            num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
        ).save_pretrained(tmp_path / "llama-70b")  # fmt: skip
        spec = tmp_path / "llama.yaml"
        spec.write_text(
            f"base_model: {tmp_path / 'llama-70b'}\nhead: {{type: causal-lm}}\n"
            "method: {type: lora}\nload: {dtype: bf16}\n"
        )

        def inference(*options: str) -> dict:
            result = adapterops("plan", str(spec), "--no-step", "--json", *options)
            assert result.returncode == 0, result.stderr
            assert "not available" not in result.stderr  # accelerate's warning per absent GPU
            return json.loads(result.stdout)["inference"]

        spread = inference("--gpus", "8x80")
        assert spread["devices"] == [f"cuda:{i}" for i in range(8)] and not spread["offload"]
        assert 130 * 2**30 < spread["weights_bytes"] < 133 * 2**30
        assert inference("--gpus", "1x80", "--set", "load.quantization=nf4")["devices"] == [
            "cuda:0"
        ]
        refused = inference("--gpus", "2x64")
        assert "131.4 GiB" in refused["error"] and "load.offload: true" in refused["error"]
        table = adapterops(
            "plan", str(spec), "--no-step", "--gpus", "2x64", "--set", "load.offload=true"
        )
        assert table.returncode == 0, table.stderr
        assert "evaluation on 2x64 GiB" in table.stdout and "2 GPUs + CPU" in table.stdout
        bad = adapterops("plan", str(spec), "--gpus", "eight")
        assert bad.returncode == 2 and "--gpus eight: write COUNTxGIB" in bad.stderr
        assert "Traceback" not in bad.stderr

    def test_table_output(self):
        result = adapterops("plan", str(EXAMPLE))
        assert result.returncode == 0, result.stderr
        assert "74,498" in result.stdout and "0.327%" in result.stdout
        assert "step peak" in result.stdout and "fake tensors" in result.stdout

    def test_invalid_spec_lists_every_problem_without_traceback(self, tmp_path):
        document = example_document()
        document["method"]["rank"] = -1
        document["train"]["batch_size"] = "many"
        document["langauge"] = "en"
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(document))
        result = adapterops("plan", str(tmp_path / "bad.yaml"))
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        for expected in (
            "method: LoRA rank must be >= 1",
            "train.batch_size",
            "langauge: unknown field",
        ):
            assert expected in result.stderr

    def test_a_list_written_with_commas_shows_how_lists_are_written(self):
        result = adapterops("plan", str(EXAMPLE), "--set", "method.targets=q,v")
        assert result.returncode == 2
        assert result.stderr.strip() == (
            f"error: {EXAMPLE}: method.targets: Input should be a valid list; a list is written "
            "[q, v] (in --set too)"
        )  # the brackets printed as they are, not taken for a terminal style

    def test_base_model_head_and_method_are_enough(self, tmp_path):
        document = example_document()
        only = {key: document[key] for key in ("base_model", "head", "method")}
        (tmp_path / "method.yaml").write_text(yaml.safe_dump(only))
        result = adapterops("plan", str(tmp_path / "method.yaml"), "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["trainable_params"] == 74_498  # as with the whole spec
        del only["method"]
        (tmp_path / "no-method.yaml").write_text(yaml.safe_dump(only))
        result = adapterops("plan", str(tmp_path / "no-method.yaml"))
        assert result.returncode == 2 and "method: Field required" in result.stderr

    def test_unknown_base_model(self, tmp_path):
        document = example_document()
        document["base_model"] = "nobody/no-such-model"
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(document))
        result = adapterops("plan", str(tmp_path / "spec.yaml"), "--json")
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        error = json.loads(result.stdout)
        assert (
            error["ok"] is False and "unknown base model 'nobody/no-such-model'" in error["error"]
        )
        # the command it names exists (huggingface_hub 1.0 removed `huggingface-cli`)
        assert error["error"].endswith("(`hf download NAME`).")
        hf = Path(sys.executable).with_name("hf")
        helped = subprocess.run([hf, "download", "--help"], check=False, capture_output=True)
        assert helped.returncode == 0, helped.stderr


def terminal_for_bars(monkeypatch: pytest.MonkeyPatch, *, width: int) -> Any:
    """A recording console the build commands' bars draw on, as at a terminal."""
    import io

    from rich.console import Console

    import flows.cli.build as build_commands

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Console(file=Terminal(), force_terminal=True, width=width, record=True)
    monkeypatch.setattr(build_commands, "errors", screen)
    monkeypatch.setattr(sys, "stderr", Terminal())
    return screen


def test_a_builds_bar_says_steps_and_loss_only_once_training_has_them(monkeypatch):
    """At a terminal the bar read "0/None steps  loss nan" through every phase before training
    (finding an earlier build, preparing the data)."""
    import flows.cli.build as build_commands

    screen = terminal_for_bars(monkeypatch, width=100)
    with build_commands.progress("sst2-en", enabled=True) as on_step:
        assert on_step is not None
        on_step.phase("prepare data")
        on_step(0, 4, 0.6931, 1e-3)
        on_step.phase("evaluate")
    shown = screen.export_text()  # every frame drawn, one after another
    assert "None" not in shown and "nan" not in shown
    last = shown.rstrip().rpartition("sst2-en: evaluate ")[2]
    assert last.strip("━╺ ") == "1/4 steps  loss 0.6931 -:--:--"


def test_a_builds_bar_counts_the_evaluations_rows_after_the_steps(monkeypatch):
    """The evaluation after training sat on the last step's count ("4/4 steps  loss ...") for
    as long as it took: minutes for an LLM generating its answers."""
    import flows.cli.build as build_commands

    screen = terminal_for_bars(monkeypatch, width=120)
    with build_commands.progress("sst2-en", enabled=True) as on_step:
        assert on_step is not None
        on_step(3, 4, 0.6931, 1e-3)
        on_step.phase("evaluate on 200 rows")
        for done in (64, 128, 192, 200):
            on_step.rows("rows scored", done, 200)
        on_step.rows("answers generated", 64, 200)  # the next pass: counted from its start
    shown = screen.export_text()
    last = shown.rstrip().rpartition("sst2-en: evaluate ")[2]
    assert last.strip("━╺╸ ").startswith("64/200 answers generated ")
    assert "200/200 rows scored" in shown and "4/4 steps" in shown


@pytest.mark.parametrize("width", [80, 200])
def test_the_adapters_table_keeps_whole_names_and_the_methods_figures_at_80_columns(
    monkeypatch, width
):
    """quickstart's table at 80 columns (a CI log, a small terminal) cut every cell to fit:
    "quickst…" for all three versions, "champi…", "trainab…"."""
    import io

    from rich.console import Console

    from flows.cli import output
    from flows.cli.build import _report_table

    screen = Console(file=io.StringIO(), width=width, record=True)
    monkeypatch.setattr(output, "console", screen)
    reports = [
        {"ref": f"quickstart-sentiment-en-{method}@1", "name": f"quickstart-sentiment-en-{method}",
         "method": method, "metrics": {"accuracy": 0.9975}, "alias": "champion",
         "trainable_params": params, "adapter_bytes": 455_000, "steps": 150, "train_seconds": 20.4}
        for method, params in (("lora", 74_498), ("bitfit", 26_882), ("pfeiffer", 113_810))
    ]  # fmt: skip
    _report_table(reports)
    shown = screen.export_text()
    assert "…" not in shown
    cells = [
        [c.strip() for c in line.split("│")[1:-1]] for line in shown.splitlines() if "│" in line
    ]
    # each version's name whole (folded at 80: read down its rows), its method's figures beside it
    folded = "".join(row[0] for row in cells)
    assert all(report["ref"] in folded for report in reports), shown
    rows = [row for row in cells if row[1]]
    assert [row[1:6] for row in rows] == [
        ["lora", "74,498", "444.3 KB", "acc 0.998", "20 s"],
        ["bitfit", "26,882", "444.3 KB", "acc 0.998", "20 s"],
        ["pfeiffer", "113,810", "444.3 KB", "acc 0.998", "20 s"],
    ]
    if width == 80:
        assert shown.rstrip().endswith(
            "not shown at this width: alias, steps (--json has every field)"
        )
    else:
        assert [row[6:] for row in rows] == [["champion", "150"]] * 3


def test_a_logs_lines_count_the_evaluations_rows_at_every_tenth(capsys):
    from flows.cli.build import LineProgress

    lines = LineProgress("sst2-en")
    for done in range(64, 1000, 64):  # 15 batches of 64, and the last of 40
        lines.rows("rows scored", done, 1000)
    lines.rows("rows scored", 1000, 1000)
    lines.rows("answers generated", 64, 1000)
    said = capsys.readouterr().err.splitlines()
    assert said == [
        f"sst2-en: evaluate: {done}/1000 rows scored ({done // 10}%)"
        for done in (64, 128, 256, 320, 448, 512, 640, 704, 832, 960, 1000)
    ] + ["sst2-en: evaluate: 64/1000 answers generated (6%)"]


class TestTrain:
    def test_bad_data_is_reported_before_training(self, tmp_path):
        (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t7\n")
        document = example_document()
        document["data"] = {"train": "train.tsv", "validation": "missing.tsv"}
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(document))
        result = adapterops("train", str(tmp_path / "spec.yaml"), "--json", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "missing.tsv does not exist" in json.loads(result.stdout)["error"]

        document["data"]["validation"] = "train.tsv"
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(document))
        result = adapterops("train", str(tmp_path / "spec.yaml"), "--json", cwd=tmp_path)
        assert result.returncode == 2
        assert "label values ['7'] are outside 0..1" in json.loads(result.stdout)["error"]
        assert not (tmp_path / "out").exists()
        # at a terminal, the seconds spent loading torch and checking are said while they last
        # (a new user saw nothing for 10 s); in a log only the error line (asserted below)
        terminal = {**os.environ, "TERM": "xterm", "COLUMNS": "200"}
        code, shown = run_cli_in_a_terminal(terminal, "train", "spec.yaml", cwd=tmp_path)
        assert code == 2 and "checking spec.yaml: its base model, method and data" in shown
        assert "label values ['7'] are outside 0..1" in shown

        result = adapterops(
            "train", str(EXAMPLE), "--set", "load.attention=flex_attention", cwd=tmp_path
        )  # on this CPU: refused before the model is loaded, in one line
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            "error: load.attention flex_attention trains on a CUDA GPU only (torch has no "
            "backward for it on a CPU): use sdpa or eager here"
        ]
        assert not (tmp_path / "out").exists()

        result = adapterops(
            "train", str(EXAMPLE), "--set", "train.max_length=1000", cwd=tmp_path
        )  # was a shape error inside the embeddings, mid-training, at the first long text
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            "error: train.max_length 1000 is more than the 512 token positions "
            "sentence-transformers/all-MiniLM-L6-v2 has (its position embeddings are learned): "
            "set train.max_length to 512 or less"
        ]

    def test_a_short_run_writes_an_adapter_that_loads(self, tmp_path):
        import transformers as T

        import peft_core as pc
        from tests.helpers import minilm_path

        result = adapterops(
            "train",
            str(EXAMPLE),
            "--json",
            "--out",
            str(tmp_path / "a"),
            "--set",
            "train.max_steps=3",
            "--set",
            "data.max_train_samples=64",
            "--set",
            "data.max_eval_samples=64",
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["ok"] and report["steps"] == 3 and report["metrics"]["examples"] == 64
        model = T.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
        record = pc.load_adapter(model, tmp_path / "a")
        assert record.name == "minilm-sst2-en-lora"

    def test_without_a_terminal_progress_is_plain_lines(self, tmp_path):
        result = adapterops(
            "train", str(EXAMPLE), "--out", str(tmp_path / "a"),
            "--set", "train.max_steps=20", "--set", "data.max_train_samples=64",
            "--set", "data.max_eval_samples=16",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stderr.splitlines() if ": step " in line]
        steps = [line.split(": step ")[1].split(" ")[0] for line in lines]
        assert steps == ["1/20", "2/20", "4/20", "6/20", "8/20", "10/20", "12/20", "14/20",
                         "16/20", "18/20", "20/20"]  # fmt: skip
        assert lines[-1].startswith("minilm-sst2-en-lora: step 20/20 (100%) loss ")
        # what it does around training, said as it starts (evaluation sat on a full bar)
        phases = [
            line.removeprefix("minilm-sst2-en-lora: ")
            for line in result.stderr.splitlines()
            if line.startswith("minilm-sst2-en-lora: ") and ": step " not in line
        ]
        assert phases == [
            "load sentence-transformers/all-MiniLM-L6-v2", "prepare data", "train",
            "evaluate on 16 rows", "evaluate: 16/16 rows scored (100%)",
            f"save into {tmp_path / 'a'}",
        ]  # fmt: skip

    def test_a_class_the_data_never_shows_is_one_plain_warning(self, tmp_path):
        result = adapterops(
            "train", str(EXAMPLE), "--out", str(tmp_path / "a"),
            "--set", "head.label_names=[negative,positive,neutral]",
            "--set", "train.max_steps=1", "--set", "data.max_train_samples=64",
            "--set", "data.max_eval_samples=16",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        warned = [line for line in result.stderr.splitlines() if "warn" in line]
        assert warned == [
            "warning: the train split has no example of label 2 ('neutral') (the head has 3): "
            "the adapter will never predict it; check head.label_names (or num_labels) and "
            "data.max_train_samples"
        ]  # once (the check and the flow both read the data), and no file:line or source line


class TestBasics:
    def test_texts_and_messages_print_as_written_not_as_styles(self):
        """A prediction's text "the [bold]film[/] was [sic] great" lost its brackets in the
        table, and an error's "[q, v]" vanished: rich read them as styles."""
        from rich.table import Table

        from flows.cli.output import console, labelled

        table = Table()
        table.add_column("text")
        table.add_row("the [bold]film[/] was [sic] great")
        with console.capture() as captured:
            console.print(table)
            console.print(labelled("error:", "bold red", "a list is written [q, v]"))
        assert "│ the [bold]film[/] was [sic] great │" in captured.get()
        assert "error: a list is written [q, v]" in captured.get()

    def test_a_plot_path_this_user_cannot_write_is_refused_before_the_registry_opens(
        self, tmp_path, monkeypatch
    ):
        """matplotlib's PermissionError came after the registry was read, as a traceback. The
        tests run as root, whom no permission stops, so os.access answers as for another user."""
        from flows import out_files
        from flows.cli import review
        from flows.errors import DataError

        monkeypatch.setattr(out_files.os, "access", lambda path, mode: Path(path) != tmp_path)
        with pytest.raises(DataError) as refused:
            review.check_plot_path(tmp_path / "t.png")
        assert str(refused.value) == (
            f"--out {tmp_path / 't.png'}: this user cannot write {tmp_path}; give a path you can"
        )
        (tmp_path / "sub").mkdir()
        review.check_plot_path(tmp_path / "sub" / "t.png")  # a folder it can write to passes

    def test_the_command_line_starts_without_torch(self):
        """Every command module is imported for every command (and --help): one that imports
        torch, peft_core or flows.spec at its top makes each start seconds slower, and the
        registry's client (SQLAlchemy, Alembic, boto3) half a second (--help took 0.8 s)."""
        heavy = "{'torch', 'peft_core', 'sqlalchemy', 'boto3', 'mlflow', 'prefect'}"
        probe = f"import sys, flows.cli; print(sorted({heavy} & set(sys.modules)))"
        result = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=False
        )
        assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr

    @pytest.mark.parametrize(
        ("args", "error"),
        [
            (("predict", "typo@1", "--text", "hi"), "no adapter named 'typo'"),
            (("predict", "typo", "other", "--text", "hi"), "no adapter named 'typo'"),
            (("evaluate", "typo@champion"), "no adapter named 'typo'"),
            (("export", "typo", "--for", "vllm", "--out", "out"), "no adapter named 'typo'"),
            (("composition", "predict", "typo", "--text", "hi"), "no composition 'typo'"),
            (("composition", "evaluate", "typo"), "no composition 'typo'"),
            (
                ("composition", "export", "typo", "--for", "peft", "--out", "out"),
                "no composition 'typo'",
            ),
            (("promote", "typo@2", "champion"), "no adapter named 'typo'"),
            (("alias", "typo@staging", "champion"), "no adapter named 'typo'"),
            (("unalias", "typo", "staging"), "no adapter named 'typo'"),
            (("rollback", "typo"), "no adapter named 'typo'"),
            (("diff", "typo@1", "typo@2"), "no adapter named 'typo'"),
            (("composition", "alias", "typo@1", "champion"), "no composition 'typo'"),
            (("composition", "diff", "typo@1", "typo@2"), "no composition 'typo'"),
            (("trend", "typo"), "no adapter named 'typo'"),
            (
                ("trend", "typo", "--out", "t.txt"),
                "--out t.txt: give a .png, .svg or .pdf file (the plot's format)",
            ),
            (("composition", "unalias", "typo", "champion"), "no composition 'typo'"),
            (("cascade", "typo"), "no adapter named 'typo'"),
            (("build", "typo.yaml"), "typo.yaml: no such spec file"),
            (("train", "typo.yaml", "--out", "out"), "typo.yaml: no such spec file"),
            (("plan", "typo.yaml"), "typo.yaml: no such spec file"),
            (("plan", "."), ". is a folder: give one spec file (retrain and deploy take folders)"),
            (
                ("train", "/dev/null", "--out", "out"),
                "/dev/null is not a regular file: give a spec file (YAML)",
            ),
            (
                ("retrain", "typo.yaml"),
                "typo.yaml: no such spec file or folder (nothing was built)",
            ),
            (
                ("deploy", "typo.yaml"),
                "typo.yaml: no such spec file or folder (nothing was deployed)",
            ),
            # what predict answers and where it writes: one line in half a second, not six
            (("predict", "typo", "--data", "d.tsv"), "data file d.tsv does not exist"),
            (
                ("predict", "typo", "--text", "x", "--data", "d.tsv"),
                "give --text or --data, not both",
            ),
            (
                ("predict", "typo"),
                "nothing to predict: give --text TEXT (- reads standard input) or --data FILE",
            ),
            (
                ("predict", "typo", "--text", "x", "--text-column", "review"),
                "--text-column names a column of the --data file: give --data FILE too",
            ),
            (
                ("predict", "typo", "--text", "x", "--out", "a.txt"),
                "--out a.txt: give a .jsonl, .csv or .tsv file (a line per answer)",
            ),
            (
                ("predict", "typo", "--text", "x", "--force"),
                "--force replaces the --out file: give --out FILE too",
            ),
            (
                ("composition", "predict", "typo", "--data", "."),
                "data file . is a folder: name a file (.tsv, .csv, .json, .jsonl, .parquet)",
            ),
            (("evaluate", "typo", "--data", "d.tsv"), "data file d.tsv does not exist"),
            (
                ("composition", "evaluate", "typo", "--data", "d.xlsx"),
                "data file d.xlsx does not exist",
            ),
            (
                ("evaluate", "typo", "--label-column", "gold"),
                "--text-column and --label-column name columns of the --data file: give --data FILE",
            ),
            (
                ("evaluate", "typo", "--out", "answers.txt"),
                "--out answers.txt: give a .jsonl, .csv or .tsv file (a line per answer)",
            ),
            (
                ("composition", "evaluate", "typo", "--data", "notes.yaml", "--out", "a-file"),
                "data file notes.yaml is a .yaml file: give a .tsv, .csv, .json, .jsonl or "
                ".parquet file",
            ),
            (
                ("evaluate", "typo", "--data", "a-file"),
                "data file a-file is a file without a suffix: give a .tsv, .csv, .json, .jsonl or "
                ".parquet file",
            ),
            (
                ("evaluate", "typo", "--force"),
                "--force replaces the --out file: give --out FILE too",
            ),
            (
                ("alias", "typo@1", "latest"),
                "invalid alias 'latest': MLflow, where reviewers see and move aliases, reserves "
                "'latest' and 'v' followed by a number for its own version names; choose another "
                "(champion, staging, production...)",
            ),
            (
                ("promote", "typo@1", "--alias", "my alias"),
                "invalid alias 'my alias': use 1-128 letters, digits, '_' or '-', starting with a "
                "letter or digit (no '/', '.' or spaces)",
            ),
            (
                ("composition", "alias", "typo@1", "7"),
                "invalid alias '7': an alias cannot be a number",
            ),
            (("push", ".", "--spec", "nope.yaml"), "nope.yaml: no such spec file"),
            (
                ("composition", "save", "c", "a@1", "b@1", "--evaluation", "nope.yaml"),
                "nope.yaml: no such spec file",
            ),
            (
                ("export", "typo", "--for", "nope", "--out", "out"),
                "unknown engine 'nope'; export --for one of peft, vllm, lorax, merged, adapterhub",
            ),
            (
                ("composition", "export", "typo", "--for", "peft", "--out", "/proc/out"),
                "cannot export for peft into /proc/out: /proc refuses new folders (No such file "
                "or directory); give a folder you can write to",
            ),
            (
                ("trend", "typo", "--out", "/proc/trend.png"),  # was a FileNotFoundError traceback
                "--out /proc/trend.png: /proc refuses new files (No such file or directory); give "
                "a path you can write to",
            ),
            (
                ("export", "typo", "--for", "vllm", "--out", "home"),
                "home exists and is not an empty folder: export into a new one",
            ),
            # an alias is on one version at a time: a version named was "invalid adapter name
            # 'a@1'" after MLflow loaded, or "no composition 'x@1'" for one that exists
            (
                ("unalias", "a@1", "champion"),
                "unalias takes an adapter name, not a version ('a@1'): `adapterops unalias a "
                "champion` takes champion off whichever version holds it",
            ),
            # the folder for the adapter: a traceback after the whole training once, then a
            # line after torch and the spec's checks (6 s); now before anything loads
            (
                ("train", str(EXAMPLE), "--out", "a-file"),
                f"cannot save the adapter of {EXAMPLE.name} into a-file: it is a file; give a "
                "folder (new or existing) to write the adapter's files into",
            ),
            (
                ("build", str(EXAMPLE), "--out", "a-file"),
                f"cannot save the adapter of {EXAMPLE.name} into a-file: it is a file; give a "
                "folder (new or existing) to write the adapter's files into",
            ),
            # a file that is not YAML, an override written wrong: read before torch (5 s)
            (
                ("train", "notes.yaml"),
                "notes.yaml: not YAML at line 2, column 11: mapping values are not allowed here",
            ),
            (
                ("build", str(EXAMPLE), "--set", "novalue"),
                f"{EXAMPLE}: novalue: an override is written key.sub=value",
            ),
            (
                ("composition", "unalias", "x@1", "staging"),
                "composition unalias takes a composition name, not a version ('x@1'): "
                "`adapterops composition unalias x staging` takes staging off whichever "
                "version holds it",
            ),
        ],
    )
    def test_a_name_or_file_that_does_not_exist_is_refused_before_torch_mlflow_or_prefect_loads(
        self, args, error, tmp_path
    ):
        """A typo waited for torch and transformers (five seconds), MLflow (two) or Prefect before
        its one line."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ADAPTEROPS_"))}
        env["ADAPTEROPS_HOME"] = str(tmp_path / "home")
        empty_registry(tmp_path / "home")  # a registry without the name
        (tmp_path / "a-file").write_text("mine")
        (tmp_path / "notes.yaml").write_text("A title\nsome words: here\n")
        result, loaded = run_cli_noting_imports(*args, env=env, cwd=tmp_path)
        assert (result.returncode, loaded) == (2, []), result.stderr[-2000:]
        assert result.stderr.strip().splitlines() == [f"error: {error}"]
        assert not (tmp_path / "out").exists() and (tmp_path / "a-file").read_text() == "mine"

    @pytest.mark.parametrize(
        ("command", "error"),
        [
            (["predict", "a", "--data", "d.tsv"], "give --text or --data, not both"),
            (["composition", "predict", "x", "--data", "d.tsv"], "give --text or --data, not both"),
            (["predict", "a"], "no adapter named 'a'"),
            (["composition", "predict", "x"], "no composition 'x'"),
        ],
    )
    def test_a_slip_with_text_dash_is_refused_before_standard_input_is_read(
        self, command, error, tmp_path
    ):
        """``--text -`` read standard input first: at a terminal, ``--text - --data FILE`` or a
        name that is not there sat waiting for Ctrl-D before its line. Standard input here
        stays open and unwritten."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ADAPTEROPS_"))}
        env["ADAPTEROPS_HOME"] = str(tmp_path / "home")
        empty_registry(tmp_path / "home")
        (tmp_path / "d.tsv").write_text("sentence\nfine\n")
        executable = Path(sys.executable).parent / "adapterops"
        with subprocess.Popen(
            [str(executable), *command, "--text", "-"], cwd=tmp_path, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) as process:  # fmt: skip
            try:
                code = process.wait(timeout=60)
            finally:
                process.kill()
            said = process.stderr.read() if process.stderr else ""
            assert (code, said) == (2, f"error: {error}\n")

    def test_text_dash_at_a_terminal_says_what_ends_the_texts(self, tmp_path, monkeypatch):
        """A person who typed ``--text -`` saw nothing while the command waited for them; a
        pipe hears nothing more than before."""
        env = home_with_fake_adapters(tmp_path, monkeypatch, ("a",))
        code, shown = run_cli_in_a_terminal(env, "predict", "a", "--text", "-", typed=b"\x04")
        hint = "reading texts from standard input, one per line: Ctrl-D ends them"
        error = "no text to predict: --text - read no line from standard input"
        assert code == 2 and hint in shown and error in shown
        assert shown.index(hint) < shown.index(error), shown
        piped = run_cli("predict", "a", "--text", "-", env=env, stdin="\n")
        assert (piped.returncode, piped.stderr) == (
            2,
            "error: no text to predict: --text - read no line from standard input\n",
        )

    def test_a_data_file_the_spec_names_is_checked_before_torch_loads(self, tmp_path):
        """A typo in data.train (relative to the spec's folder) waited for torch and the spec's
        checks (6 s) before its line; a validation file of a type nothing reads, the same."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ADAPTEROPS_"))}
        env["ADAPTEROPS_HOME"] = str(tmp_path / "home")
        document = example_document()
        document["data"] = {"train": "typo.tsv", "validation": "notes.txt"}
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(document))
        (tmp_path / "notes.txt").write_text("a sentence\n")
        (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood\t1\n")
        refused = {}
        for command, overrides in (
            ("train", []),
            ("build", []),
            ("train", ["--set", "data.train=train.tsv"]),  # there: the validation file next
        ):
            result, loaded = run_cli_noting_imports(
                command, "spec.yaml", *overrides, env=env, cwd=tmp_path
            )
            assert (result.returncode, loaded) == (2, []), result.stderr[-2000:]
            refused[(command, *overrides)] = result.stderr.strip().splitlines()
        missing = [
            f"error: spec.yaml: data.train: data file {tmp_path / 'typo.tsv'} does not exist "
            "('typo.tsv' is relative to the spec's folder)"
        ]
        assert list(refused.values()) == [
            missing,
            missing,
            [f"error: spec.yaml: data.validation: data file {tmp_path / 'notes.txt'} is a .txt "
             "file: give a .tsv, .csv, .json, .jsonl or .parquet file"],
        ]  # fmt: skip
        assert not (tmp_path / "home").exists()

    @pytest.mark.parametrize("command", ["build", "train"])
    def test_a_typo_in_the_spec_is_refused_before_mlflow_or_prefect_loads(self, command, tmp_path):
        """A spec is checked against the methods' plug-ins, so torch loads; the modules build
        needs next (MLflow, Prefect: about 4 s) loaded before the check, and a misspelt field
        waited for them too (9 s to its line, measured). train is pinned the same way."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ADAPTEROPS_"))}
        env |= {"ADAPTEROPS_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
        args = (command, str(EXAMPLE), "--set", "train.eval_evry=10", "--out", "out")
        result, loaded = run_cli_noting_imports(*args, env=env, cwd=tmp_path)
        assert (result.returncode, loaded) == (2, ["torch"]), result.stderr[-2000:]
        assert result.stderr.strip().splitlines() == [
            f"error: {EXAMPLE}: train.eval_evry: unknown field: did you mean eval_every?"
        ]
        assert not (tmp_path / "out").exists() and not (tmp_path / "home").exists()

    def test_the_quick_exit_keeps_what_pythons_exit_does_that_anyone_sees(self, tmp_path):
        """The CLI leaves without Python's teardown of every module (1-1.7 s after the last
        line with MLflow loaded); the rest of an exit still happens: output still buffered is
        written, the threading module's exit calls run and then the atexit handlers (Prefect's
        temporary server stops in one), a thread that is not a daemon finishes, and the status
        is sys.exit's."""
        program = (
            "import atexit, sys, threading, time\n"
            "from pathlib import Path\n"
            "from flows.cli.quick_exit import exit_without_teardown\n"
            f"folder = Path({str(tmp_path)!r})\n"
            "atexit.register(lambda: (folder / 'atexit').write_text('ran'))\n"
            # Prefect's services drain in the threading module's exit calls, before atexit's
            "threading._register_atexit(lambda: (folder / 'threading').write_text("
            "'after atexit' if (folder / 'atexit').exists() else 'first'))\n"
            "threading.Thread(target=lambda: (time.sleep(0.3), (folder / 'thread').write_text('done'))).start()\n"
            "sys.stdout.write('buffered, no newline')\n"
            "exit_without_teardown(sys.argv[1] if sys.argv[1] != 'none' else None)\n"
        )
        for code, status, said in (("none", 0, ""), ("refused", 1, "refused\n")):
            for marker in ("atexit", "thread", "threading"):
                (tmp_path / marker).unlink(missing_ok=True)
            result = subprocess.run(
                [sys.executable, "-c", program, code], capture_output=True, text=True, check=False
            )
            assert (result.returncode, result.stdout, result.stderr) == (
                status,
                "buffered, no newline",
                said,
            )
            assert (tmp_path / "atexit").read_text() == "ran"
            assert (tmp_path / "thread").read_text() == "done"
            assert (tmp_path / "threading").read_text() == "first"

    def test_version_and_short_help(self):
        version = adapterops("--version")
        assert (version.returncode, version.stdout) == (0, "adapterops 0.1.0\n")
        short = adapterops("-h")
        assert short.returncode == 0 and "Usage: adapterops" in short.stdout

    @pytest.mark.parametrize(
        ("args", "error"),
        [
            (("ls", "--bogus"), "No such option: --bogus"),
            (("predict",), "Missing argument 'REF'."),
            (("predict", "x", "--batch-size", "0"), "Invalid value for '--batch-size': "),
            (("push",), "Missing argument 'FOLDER'."),
            # an unset shell variable: Path('') is '.', so train wrote over the files of the
            # folder a person stood in, push registered it, pull downloaded into it
            (("push", ""), f"Invalid value for 'FOLDER': {EMPTY} FOLDER"),
            (("train", "spec.yaml", "--out", ""), f"Invalid value for '--out': {EMPTY} a path"),
            (("pull", "x", ""), f"Invalid value for 'DESTINATION': {EMPTY} DESTINATION"),
            (("retrain", "specs", " "), "Invalid value for 'SPEC': ' ' is empty (an unset shell"),
            (("predict", "x", "--data", ""), f"Invalid value for '--data': {EMPTY} FILE"),
            # it fell through to the default: an unset $ALIAS moved champion
            (("promote", "x@1", "--alias", ""), f"Invalid value for '--alias': {EMPTY} a value"),
            (("promote", "x@1", ""), f"Invalid value for 'ALIAS': {EMPTY} ALIAS"),
            # fell through to the files' base model; read 'sentence'; ended in a KeyError
            (
                ("push", "f", "--base-model", ""),
                f"Invalid value for '--base-model': {EMPTY} a value",
            ),
            (
                ("predict", "x", "--text-column", ""),
                f"Invalid value for '--text-column': {EMPTY} NAME",
            ),
            (("evaluate", "x", "--text-column", " "), "Invalid value for '--text-column': ' ' is"),
            (("ls", "--task", ""), f"Invalid value for '--task': {EMPTY} a value"),
            # bytes that are not UTF-8 (a Latin-1 terminal): a UnicodeEncodeError traceback
            # from the SQL driver; the tokenizer's TypeError traceback
            (("ls", "--task", "t\udcff"), f"Invalid value for '--task': 't\ufffd' {NOT_UTF8}"),
            (
                ("predict", "x", "--text", "na\udcefve"),
                f"Invalid value for '--text': 'na\ufffdve' {NOT_UTF8}",
            ),
            (
                ("push", "f", "--description", "caf\udce9"),
                "Invalid value for '--description': 'caf",
            ),
        ],
    )
    def test_a_usage_error_is_one_line(self, args, error, tmp_path):
        """With --json, one JSON document: a script parses stdout, and a wrong option gave it
        nothing there (click's box went to stderr). Exit 2 either way, one line on stderr."""
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "ADAPTEROPS_HOME": str(tmp_path)}
        result = run_cli(*args, "--json", env=env)
        assert result.returncode == 2, result.stderr
        document = json.loads(result.stdout)
        assert (document["ok"], document["kind"]) == (False, "UsageError")
        assert document["error"].startswith(error)
        assert result.stderr == f"error: {document['error']}\n"
        # without --json: the same one line, with click's usage line folded in (was its box)
        plain = run_cli(*args, env=env)
        assert (plain.returncode, plain.stdout) == (2, "")
        [line] = plain.stderr.splitlines()
        assert line.startswith(f"error: {error}") and line.endswith("(-h for help)"), line
        assert f"Usage: adapterops {args[0]} [OPTIONS]" in line

    def test_a_bare_command_group_prints_its_help(self):
        """``adapterops db`` (no subcommand) is not an error line: its help page, exit 2."""
        result = adapterops("db")
        assert result.returncode == 2 and "Usage: adapterops db" in result.stdout + result.stderr
        assert "error:" not in result.stdout + result.stderr

    def test_help_pages_name_values_as_people_write_them(self):
        """No Python types (``<list[str]>``, ``<bool>``), no RST markup, no docstring line breaks
        inside a sentence, arguments in capitals: on every command's page, at 80 columns."""
        import typer
        from click.testing import CliRunner

        from flows.cli import app
        from flows.cli.help import plain_value_names

        tree = typer.main.get_command(app)
        pages = [()] + [
            (name, *([child] if child else []))
            for name, command in tree.commands.items()
            for child in [None, *getattr(command, "commands", {})]
        ]
        # In this process, the command main() runs: some forty pages, 2 s each as subprocesses.
        command, runner = plain_value_names(typer.main.get_command(app)), CliRunner()
        for page in pages:
            result = runner.invoke(command, [*page, "--help"], env={"COLUMNS": "80"})
            assert result.exit_code == 0, (page, result.output)
            shown = result.stdout
            for leak in ("<bool>", "list[", "<str>", "<path>", "<int", "``", "{name}", "{ref}"):
                assert leak not in shown, f"{leak!r} on the page of {page}:\n{shown}"
        # and three through the installed command, as a person sees them
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}
        build = run_cli("build", "--help", env=env).stdout
        assert "--set              KEY=VALUE" in build and "{SPEC}" in build
        assert "Usage: adapterops push [OPTIONS] {FOLDER}" in run_cli("push", "-h", env=env).stdout
        commands = run_cli("--help", env=env).stdout
        # the docstring's own line break no longer ends a help line early
        # (the names' column is as wide as the longest command name, "composition")
        assert re.search(r"│ rollback +Move champion back to the previous version\.", commands)
        assert "promote,\n" not in commands


def test_prefects_home_is_made_under_a_new_adapterops_home_when_a_flow_runs(tmp_path, monkeypatch):
    from flows.cli import use_our_prefect_home
    from flows.cli.prefect_server import prefect_answers

    home = tmp_path / "new" / "home"
    monkeypatch.setenv("ADAPTEROPS_HOME", str(home))
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    monkeypatch.setenv("DO_NOT_TRACK", "")  # (restored to unset afterwards)
    monkeypatch.delenv("DO_NOT_TRACK")
    use_our_prefect_home()
    assert os.environ["PREFECT_HOME"] == str(home / "prefect")
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    # the client's telemetry too: at a terminal Prefect printed its notice on the first flow
    from prefect._internal.analytics.enabled import is_telemetry_enabled

    assert os.environ["DO_NOT_TRACK"] == "1" and not is_telemetry_enabled()
    # Prefect's 20 s ran out on a busy CI runner while the server migrated its new database
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "90"
    assert not home.exists()  # a command that runs no flow writes nothing
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    # as in a fresh process with no server configured (the session's Prefect server may be set)
    with temporary_settings({PREFECT_HOME: os.environ["PREFECT_HOME"]}, None, [PREFECT_API_URL]):
        prefect_answers()  # before a flow on the temporary server
    assert (home / "prefect").is_dir()  # Prefect makes no folder: its database could not open


def test_the_temporary_prefect_server_started_before_a_flow_is_the_one_flows_use(
    tmp_path, monkeypatch
):
    """``start_temporary_prefect`` starts the server Prefect's client would start at the first
    flow (one per process), so the flow finds it answering and starts no second one; with a
    server configured it does nothing."""
    from prefect.client.orchestration import get_client
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from flows.cli.prefect_server import start_temporary_prefect

    said: list[str] = []
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        start_temporary_prefect(said.append)  # a configured server: nothing to start
    assert said == [] and None not in SubprocessASGIServer._instances

    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the session's server, if exported
    (tmp_path / "prefect").mkdir()
    with temporary_settings({PREFECT_HOME: tmp_path / "prefect"}, None, [PREFECT_API_URL]):
        try:
            start_temporary_prefect(said.append)
            server = SubprocessASGIServer()
            process = server.server_process
            assert process is not None and process.poll() is None
            with get_client(sync_client=True) as client:  # what a flow run asks for
                assert str(client.api_url).rstrip("/") == server.api_url
                assert client.hello().status_code == 200
            assert SubprocessASGIServer().server_process is process  # no second server
        finally:
            SubprocessASGIServer().stop()
    assert said == ["start a temporary Prefect server (PREFECT_API_URL is not set)"]


def test_help_and_registry_reads_leave_a_new_home_unwritten(tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ADAPTEROPS_"))}
    env |= {"ADAPTEROPS_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("PREFECT_HOME", None)
    for args in (["--help"], ["build", "--help"], ["methods"]):
        result = run_cli(*args, env=env)
        assert result.returncode == 0, result.stderr
    assert not home.exists()
    # reading a registry that is not there (a mistyped ADAPTEROPS_HOME, another folder) says
    # where it looked; it was an empty registry made on the spot, and a stray folder
    missing = (
        f"error: no registry at {home / 'registry.db'}: nothing was registered there "
        f"(ADAPTEROPS_HOME={home}). If your registry is elsewhere, set ADAPTEROPS_HOME or "
        "ADAPTEROPS_REGISTRY_URL to it; `adapterops build SPEC` or `adapterops push FOLDER` "
        "starts one here\n"
    )
    reads = (["ls"], ["show", "x@1"], ["history", "x"], ["composition", "ls"], ["promote", "x@1"])
    for args in (*reads, ["diff", "x@1", "x@2"], ["pull", "x@1", str(tmp_path / "out")]):
        result = run_cli(*args, env=env)
        assert (result.returncode, result.stderr) == (2, missing), args
    listed = run_cli("ls", "--json", env=env)
    assert listed.returncode == 2 and json.loads(listed.stdout)["kind"] == "NoRegistryError"
    # a version where a name goes is the slip to tell of, registry or not
    for command in ("ls", "trend", "unalias"):
        result = run_cli(command, "x@2", *(["champion"] if command == "unalias" else []), env=env)
        assert result.stderr.startswith(f"error: {command} takes an adapter name, not a version")
    assert not home.exists()


def test_a_home_or_url_that_is_not_utf8_is_one_line_before_anything_is_made(tmp_path):
    """A folder named in Latin-1 (bytes a filesystem takes) as ADAPTEROPS_HOME, or as the
    current folder with it unset, and a registry URL holding such bytes: a UnicodeEncodeError
    traceback where the database URL was quoted, from every command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ADAPTEROPS_"))}
    env.pop("PREFECT_HOME", None)
    latin = tmp_path / "caf\udce9"  # the byte 0xe9, as Python reads it from the environment
    latin.mkdir()
    tail = "is not UTF-8 (byte 0xe9 at position {}): the registry's URLs are made of it, and take UTF-8 only; {}\n"  # fmt: skip
    shown = str(tmp_path / "caf\ufffd")
    for extra, cwd, said in [
        ({"ADAPTEROPS_HOME": str(latin)}, tmp_path,
         f"error: ADAPTEROPS_HOME {shown!r} " + tail.format(len(shown) - 1, "give a folder whose name is UTF-8")),
        ({}, latin,
         f"error: the default home (ADAPTEROPS_HOME unset) '{shown}/.adapterops' "
         + tail.format(len(shown) - 1, "set ADAPTEROPS_HOME to a folder whose name is UTF-8")),
        ({"ADAPTEROPS_REGISTRY_URL": f"sqlite:///{latin}/r.db", "ADAPTEROPS_HOME": str(tmp_path)}, tmp_path,
         "error: ADAPTEROPS_REGISTRY_URL " + tail.format(len(shown) + 9, "write it in UTF-8")),
    ]:  # fmt: skip
        for args in (["ls"], ["db", "upgrade"]):
            result = run_cli(*args, env=env | extra | {"HF_HUB_OFFLINE": "1"}, cwd=cwd)
            assert (result.returncode, result.stderr) == (2, said), (args, extra)
    assert list(latin.iterdir()) == []  # nothing made there


def test_a_service_setting_that_is_not_utf8_is_one_line_that_does_not_show_it(tmp_path):
    """MLFLOW_TRACKING_URI with a Latin-1 byte was a UnicodeEncodeError traceback from inside
    MLflow's client; a secret with one, a traceback where secrets are gathered to be masked.
    The value is not said (it may be a secret); help pages still show."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ADAPTEROPS_"))}
    env |= {"ADAPTEROPS_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    for name, value, position in [
        ("MLFLOW_TRACKING_URI", "http://caf\udce9:5000", 10),
        ("AWS_SECRET_ACCESS_KEY", "s3cr\udce9t", 4),
    ]:
        said = (
            f"error: Invalid value: the environment variable {name} is not UTF-8 text (byte "
            f"0xe9 at position {position}): set it in UTF-8\n"
        )
        result = run_cli("sync", env=env | {name: value})
        assert (result.returncode, result.stderr) == (2, said), name
        result = run_cli("ls", "--json", env=env | {name: value})
        assert result.returncode == 2 and json.loads(result.stdout)["kind"] == "UsageError"
        assert "s3cr" not in result.stdout + result.stderr
    helped = run_cli("sync", "--help", env=env | {"MLFLOW_TRACKING_URI": "http://caf\udce9"})
    assert helped.returncode == 0 and "Usage: adapterops sync" in helped.stdout
    assert not (tmp_path / "home").exists()


def test_a_home_that_is_a_file_or_empty(tmp_path):
    """ADAPTEROPS_HOME naming a file was FileExistsError's traceback (`db upgrade`) or "no
    registry there, build starts one here" (`ls`); an empty ADAPTEROPS_HOME (a shell variable
    unset in `ADAPTEROPS_HOME=$DIR`) put registry.db in the current folder itself; a blank
    ADAPTEROPS_ARTIFACTS_URL, the files in a folder named `%20`."""
    file = tmp_path / "home"
    file.write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ADAPTEROPS_"))}
    env |= {"ADAPTEROPS_HOME": str(file), "HF_HUB_OFFLINE": "1"}
    env.pop("PREFECT_HOME", None)
    said = (
        f"error: ADAPTEROPS_HOME={file} is a file, not a folder: the registry, its files and "
        "the flows' caches go in that folder. Point ADAPTEROPS_HOME at a folder (it is made if "
        "missing)\n"
    )
    for args in (["ls"], ["db", "upgrade"]):
        result = run_cli(*args, env=env)
        assert (result.returncode, result.stderr) == (2, said), args
    for args in (["train", str(EXAMPLE), "--out", "out"], ["build", str(EXAMPLE)]):
        result, loaded = run_cli_noting_imports(*args, env=env, cwd=tmp_path)
        assert (result.returncode, result.stderr, loaded) == (2, said, []), args  # before torch
    assert file.read_text() == "not a folder" and sorted(tmp_path.iterdir()) == [file]
    # a registry URL one folder too deep, under that file
    under = env | {"ADAPTEROPS_REGISTRY_URL": f"sqlite:///{file}/db/registry.db"}
    under["ADAPTEROPS_HOME"] = str(tmp_path / "elsewhere")
    result = run_cli("db", "upgrade", env=under)
    assert (result.returncode, result.stderr) == (
        2,
        f"error: cannot create the registry database {file}/db/registry.db: {file} is a file, "
        "not a folder; give the registry URL (ADAPTEROPS_REGISTRY_URL) a path under a folder\n",
    )
    # empty or blank: the defaults, as if unset (a blank artifacts URL was a folder named %20)
    work = tmp_path / "work"
    work.mkdir()
    blank = {"ADAPTEROPS_HOME": "", "ADAPTEROPS_REGISTRY_URL": "", "ADAPTEROPS_ARTIFACTS_URL": " "}
    created = run_cli("db", "upgrade", env=env | blank, cwd=work)
    assert created.returncode == 0, created.stderr
    status = run_cli("db", "status", "--json", env=env | blank, cwd=work)
    assert status.returncode == 0, status.stderr
    default = work / ".adapterops"
    assert {k: json.loads(status.stdout)[k] for k in ("database", "artifacts")} == {
        "database": f"sqlite:///{default / 'registry.db'}",
        "artifacts": (default / "artifacts").as_uri(),
    }
    assert sorted(p.name for p in work.iterdir()) == [".adapterops"]
    # ... and said where it matters: a CI secret that is not set arrives empty, and a build
    # then starts a new registry on the runner (infra/ci/require-variables.sh fails the job)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    missing = run_cli("ls", env=env | blank, cwd=elsewhere)
    assert (
        missing.returncode == 2
        and (
            "(ADAPTEROPS_REGISTRY_URL is set but empty (a CI secret that is not set arrives empty), "
            "taken as unset: the embedded default under ADAPTEROPS_HOME (./.adapterops if unset))"
        )
        in missing.stderr
    ), missing.stderr


class TestMethods:
    def test_lists_every_method_in_order(self):
        result = adapterops("methods", "--json")
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        assert [r["type"] for r in rows] == [
            "lora", "dora", "ia3", "bitfit", "houlsby", "pfeiffer", "fusion", "full", "peft",
        ]  # fmt: skip
        ia3 = next(r for r in rows if r["type"] == "ia3")
        assert ia3 == {
            "type": "ia3",
            "summary": "learned rescaling of keys, values and FFN activations (Liu et al. 2022)",
            "module": "peft_core.methods.ia3",
            "fields": ["targets", "feedforward"],
            "mergeable": True,
            "merges": "yes",
            "peft_format": "IA3",
        }
        peft = next(r for r in rows if r["type"] == "peft")
        assert (peft["mergeable"], peft["merges"]) == (True, "tuners, not prompt methods")
        # at 80 columns each cell folds whole ("reduction_facto…" was all of Houlsby's fields)
        table = run_cli("methods", env={**os.environ, "COLUMNS": "80"}).stdout
        assert "…" not in table
        assert "original_ln_before" in re.sub(r"[│\s]", "", table)  # folded: read down the rows

    def test_a_new_method_plans_from_a_spec(self, tmp_path):
        document = example_document()
        document["method"] = {"type": "ia3"}
        (tmp_path / "ia3.yaml").write_text(yaml.safe_dump(document))
        result = adapterops("plan", str(tmp_path / "ia3.yaml"), "--json")
        assert result.returncode == 0, result.stderr
        # 6 layers x (key 384 + value 384 + FFN input 1536) + the classifier (384 x 2 + 2)
        assert json.loads(result.stdout)["trainable_params"] == 6 * (384 + 384 + 1536) + 770

    def test_a_step_longer_than_the_bases_positions_is_one_line(self):
        """It was a fake-tensor shape error with two tracebacks (torch logged one) and exit 1."""
        result = adapterops("plan", str(EXAMPLE), "--set", "train.max_length=100000")
        assert (result.returncode, result.stderr.strip().splitlines()) == (2, [
            "error: train.max_length 100000 is more than the 512 token positions "
            "sentence-transformers/all-MiniLM-L6-v2 has (its position embeddings are learned): "
            "set train.max_length to 512 or less"
        ])  # fmt: skip
        without_step = adapterops("plan", str(EXAMPLE), "--set", "train.max_length=100000",
                                  "--no-step", "--json")  # fmt: skip
        assert json.loads(without_step.stdout)["trainable_params"] == 74_498

    def test_any_peft_method_plans_from_a_spec(self, tmp_path):
        document = example_document()
        document["method"] = {
            "type": "peft",
            "config": {"peft_type": "LOHA", "r": 4, "target_modules": ["query", "value"]},
        }
        (tmp_path / "loha.yaml").write_text(yaml.safe_dump(document))
        result = adapterops("plan", str(tmp_path / "loha.yaml"), "--json")
        assert result.returncode == 0, result.stderr
        # 6 layers x 2 modules x four 384x4 Hadamard factors + the classifier (384 x 2 + 2)
        data = json.loads(result.stdout)
        assert data["trainable_params"] == 6 * 2 * 4 * 384 * 4 + 770
        # peft's LoHa forward reads a tensor's value: no fake-tensor estimate, the rest stands
        assert "cannot be measured on fake tensors" in data["step"]["error"]

    def test_targets_that_match_nothing_fail_before_the_flow_in_one_line(self, tmp_path):
        document = example_document()
        document["method"]["targets"] = ["nowhere"]
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(document))
        result = adapterops("build", str(tmp_path / "spec.yaml"), cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1  # one error, not a flow's tracebacks, not wrapped at 80 columns
        assert "targets ['nowhere'] matched no module" in errors[0]
        assert errors[0].endswith("key, query, value")
        assert not (tmp_path / "out").exists()

    def test_an_invalid_peft_config_is_a_spec_error_before_the_flow(self, tmp_path):
        document = example_document()
        document["method"] = {
            "type": "peft",
            "config": {"peft_type": "LOHA", "rank": 4, "target_modules": ["query"]},
        }
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(document))
        result = adapterops("build", str(tmp_path / "bad.yaml"), "--json", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        error = json.loads(result.stdout)["error"]
        assert "method: peft: invalid LOHA config" in error and "'rank'" in error
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "out").exists()

        document["method"]["config"] = {"peft_type": "LOHHA"}
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(document))
        result = adapterops("build", str(tmp_path / "bad.yaml"), "--json", cwd=tmp_path)
        assert result.returncode == 2
        assert "peft_type 'LOHHA' is not a peft method" in json.loads(result.stdout)["error"]


def test_a_build_the_gate_kept_out_names_the_diff_to_read():
    from flows.cli.lifecycle import what_changed_hint

    kept_out = {"name": "sst2", "ref": "sst2@4", "promoted": False, "champion_metric": 0.91}
    assert what_changed_hint(kept_out, "champion") == (
        "what changed: adapterops diff sst2@champion sst2@4"
    )
    assert what_changed_hint({**kept_out, "promoted": True}, "champion") == ""
    # diverged, or nothing to beat: no champion was weighed
    assert what_changed_hint({**kept_out, "champion_metric": None}, "champion") == ""


@pytest.mark.parametrize("args", [("methods",), ("methods", "--json")])
def test_a_full_disk_is_one_line_and_exit_1(args):
    """The machine refused a write (disk full, quota, read-only filesystem): one line that says
    so and the way on, exit 1, not a traceback (and no second error from Python's flush at exit).
    /dev/full answers every write with ENOSPC."""
    executable = Path(sys.executable).parent / "adapterops"
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [str(executable), *args],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            timeout=600,
            check=False,
        )
    assert (result.returncode, result.stderr) == (
        1,
        "error: No space left on device writing what the command writes: free space there, or "
        "write somewhere else\n",
    )
