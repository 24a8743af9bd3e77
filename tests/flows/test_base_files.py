"""A base model folder that lacks what loading it needs (its weights, its tokenizer) is one line
naming the folder and what to save there, before the data is read or a flow starts: it was
transformers' traceback ("no file named model.safetensors", "Couldn't instantiate the backend
tokenizer"), after the data had been read. ``adapterops plan`` needs the config alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import transformers as T
import yaml

from tests.helpers import llama_lm_spec, run_cli


def _user(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ADAPTEROPS_"))}
    return {**env, "HF_HUB_OFFLINE": "1", "ADAPTEROPS_HOME": str(tmp_path / "home")}


def test_a_base_folder_without_weights_or_tokenizer_is_one_line_before_anything_runs(
    tmp_path, sst2_dir
):
    spec = llama_lm_spec(tmp_path, sst2_dir, batch_size=2, max_length=32)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    base, env = tmp_path / "base", _user(tmp_path)

    planned = run_cli("plan", "spec.yaml", "--json", env=env, cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr[-2000:]  # the config is all plan reads

    result = run_cli("train", "spec.yaml", "--out", "out", env=env, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        2,
        f"error: base model {base} has a config.json but no weights (model.safetensors or "
        "pytorch_model.bin, or their .index.json when sharded): save the model into it "
        "(model.save_pretrained(folder)) or download it where the network allows (`hf download "
        "NAME`); `adapterops plan` needs the config alone\n",
    )
    assert not (tmp_path / "out").exists()

    config = T.AutoConfig.from_pretrained(base)
    T.LlamaForCausalLM(config).save_pretrained(base)  # the weights, still no tokenizer
    built = run_cli("build", "spec.yaml", "--json", env=env, cwd=tmp_path)
    assert built.returncode == 2, built.stderr[-2000:]
    assert json.loads(built.stdout) == {
        "ok": False,
        "kind": "BaseModelNotFound",
        "error": f"base model {base} has no tokenizer (none of tokenizer.json, "
        "tokenizer_config.json, tokenizer.model, vocab.txt, ...): save the base's tokenizer "
        "beside its config.json (tokenizer.save_pretrained(folder))",
    }
    assert not (tmp_path / "home" / "registry.db").exists()  # nothing was registered, or begun

    # a tokenizer_config.json alone: it loads, and turns text into nothing
    (base / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer"}')
    result = run_cli("train", "spec.yaml", "--out", "out", env=env, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        2,
        f"error: base model {base}'s tokenizer turns text into no tokens (a vocabulary of 3: its "
        "files are incomplete): save the base's tokenizer beside its config.json "
        "(tokenizer.save_pretrained(folder))\n",
    )

    # one transformers cannot build here
    (base / "tokenizer_config.json").unlink()
    (base / "tokenizer.json").write_text("{not json")
    result = run_cli("train", "spec.yaml", "--out", "out", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: base model {base}'s tokenizer cannot be loaded here (")
    assert line.endswith(
        "): save the base's tokenizer beside its config.json (tokenizer.save_pretrained(folder)), "
        "or install what it names"
    )
    assert not (tmp_path / "out").exists()


def test_a_config_json_transformers_cannot_read_is_one_line_for_plan_and_train(tmp_path, sst2_dir):
    """Not JSON, or an architecture this transformers does not know (a model newer than it):
    plan and train said so with transformers' traceback; train, once a tokenizer was there,
    blamed the tokenizer (AutoTokenizer reads config.json too)."""
    spec = llama_lm_spec(tmp_path, sst2_dir, complete=True, batch_size=2, max_length=32)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    base, env = tmp_path / "base", _user(tmp_path)
    version = T.__version__
    for written, reason in (
        ("{not json", f"It looks like the config file at '{base}/config.json' is not a valid JSON file."),
        ('{"model_type": "llama-9"}', "The checkpoint you are trying to load has model type `llama-9` but"),
    ):  # fmt: skip
        (base / "config.json").write_text(written)
        for command in (["plan", "spec.yaml"], ["train", "spec.yaml", "--out", "out"]):
            result = run_cli(*command, env=env, cwd=tmp_path)
            assert result.returncode == 2, result.stderr[-2000:]
            [line] = result.stderr.splitlines()
            assert line.startswith(
                f"error: base model {base}'s config.json cannot be read by transformers {version} "
                f"({reason}"
            ), line
            assert line.endswith(
                "): save the model's own config.json there (model.config.save_pretrained(folder))"
            )
    assert not (tmp_path / "out").exists()


def test_a_base_folder_now_holding_another_model_is_refused_before_the_build_trains(
    tmp_path, sst2_dir
):
    """A folder updated in place to another release of its model (here: a longer context) is
    another base under the same name: registering what a build trained on it was refused,
    after the training. Now the build asks first, from the folder's config alone."""
    import pytest
    import sqlalchemy as sa

    import peft_core as pc
    from flows.prepare_job import check_against_registry
    from flows.spec import parse_spec
    from registry import BaseModelMismatchError, Registry
    from registry.bundles import base_digests

    document = llama_lm_spec(tmp_path, sst2_dir, complete=True)
    base = tmp_path / "base"
    model = T.AutoModelForCausalLM.from_pretrained(base)
    pc.add_adapter(model, "lm", pc.LoRA(rank=8, targets=("q_proj", "v_proj")))
    tokenizer = T.AutoTokenizer.from_pretrained(base)
    saved = pc.save_adapter(model, "lm", tmp_path / "adapter", tokenizer=tokenizer)
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "artifacts")
    where = {"base_model": str(base), "task": "lm", "language": "en"}
    registry.register(saved, name="tiny-llama-lm", **where)
    spec = parse_spec(document)
    check_against_registry(spec, registry)  # the model registered under the name: no error
    # nor with the base recorded as older code did, the vocabulary in its digest
    fingerprint = json.loads((saved / "adapter.json").read_text())["fingerprint"]
    with registry.database.session() as session:
        session.execute(
            sa.text("UPDATE base_models SET fingerprint = :f"), {"f": base_digests(fingerprint)[1]}
        )
    check_against_registry(spec, registry)

    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 262144}))
    with pytest.raises(BaseModelMismatchError) as refused:
        check_against_registry(spec, registry)
    assert str(refused.value).startswith(f"base model '{base}' is registered with fingerprint ")
    assert str(refused.value).endswith(
        "now (another config or other weight shapes): give this model a name of its own "
        f"(another folder, or its Hub id), or point base_model back at the model registered as "
        f"'{base}'"
    )
