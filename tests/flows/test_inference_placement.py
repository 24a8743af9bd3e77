"""Where evaluation and predict put the base: one GPU when it fits, else spread over the GPUs
(accelerate's device_map, blocks whole), else offloaded with ``load.offload``, else a one-line
refusal before any weight is read. Decided from the free memory, which the tests set."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from flows import inference_placement
from flows.build_job import build_from_spec
from flows.errors import DataError
from flows.inference_placement import InferencePlacement, Memory, place_for_inference
from flows.predict_job import predict
from flows.quickstart import minilm_sst2_spec
from flows.spec import AdapterSpec, load_spec
from flows.train_job import load_base_model
from peft_core.offload import is_offloaded
from registry import Registry

GIB = 2**30
LLM_EXAMPLE = (
    Path(__file__).resolve().parents[2] / "examples" / "llm" / "llama-3.2-1b-chat-qlora.yaml"
)
LLAMA_70B = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 8192,
    "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
    "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
}  # fmt: skip


@pytest.fixture(scope="module")
def llama_70b(tmp_path_factory: pytest.TempPathFactory) -> AdapterSpec:
    """The LLM example on a 70B Llama (config.json only: nothing here loads its weights), bf16."""
    folder = tmp_path_factory.mktemp("llama-70b")
    (folder / "config.json").write_text(json.dumps(LLAMA_70B))
    return load_spec(LLM_EXAMPLE, [f"base_model={folder}", "load.quantization=none"])


def with_load(spec: AdapterSpec, **fields: object) -> AdapterSpec:
    return spec.model_copy(update={"load": spec.load.model_copy(update=fields)})


def test_a_base_that_fits_one_gpu_goes_there_whole(llama_70b: AdapterSpec) -> None:
    nf4 = place_for_inference(with_load(llama_70b, quantization="nf4"), Memory((80 * GIB,), 0))
    assert nf4.device_map == {"": "cuda:0"} and not nf4.spread
    assert 34 * GIB < nf4.weights_bytes < 40 * GIB  # 4-bit blocks, bf16 embeddings and head
    assert nf4.describe().endswith("GiB of base weights on cuda:0")


def test_a_base_too_big_for_one_gpu_spreads_evenly_in_whole_blocks(llama_70b: AdapterSpec) -> None:
    placement = place_for_inference(llama_70b, Memory((80 * GIB,) * 4, 0))
    assert 130 * GIB < placement.weights_bytes < 133 * GIB  # 70.6e9 bf16 weights
    assert placement.devices == ("cuda:0", "cuda:1", "cuda:2", "cuda:3") and placement.spread
    assert not placement.offloads and placement.summary() == "4 GPUs"
    blocks = {k: v for k, v in placement.device_map.items() if k.startswith("model.layers.")}
    assert sorted(blocks) == sorted(f"model.layers.{i}" for i in range(80))  # none split
    per_gpu = Counter(blocks.values())
    assert set(per_gpu) == {0, 1, 2, 3} and max(per_gpu.values()) - min(per_gpu.values()) <= 3
    assert "spread over cuda:0, cuda:1, cuda:2, cuda:3" in placement.describe()


def test_a_base_too_big_for_the_gpus_is_refused_in_one_line(llama_70b: AdapterSpec) -> None:
    with pytest.raises(DataError) as refused:
        place_for_inference(llama_70b, Memory((64 * GIB,) * 2, 500 * GIB))
    message = str(refused.value)
    assert "weights take 131.4 GiB" in message and "85% of the 128.0 GiB free on 2 GPUs" in message
    assert "load.quantization: nf4" in message and "load.offload: true" in message
    assert "\n" not in message


def test_offload_keeps_what_no_gpu_holds_in_cpu_memory_then_on_disk(
    llama_70b: AdapterSpec,
) -> None:
    placement = place_for_inference(
        with_load(llama_70b, offload=True), Memory((80 * GIB,), 50 * GIB)
    )
    assert placement.offload and placement.devices == ("cuda:0", "cpu", "disk")
    assert placement.offloads and placement.summary() == "1 GPU + CPU + disk"
    where = Counter(placement.device_map.values())
    assert 36 <= where[0] <= 42 and where["cpu"] >= 20 and where["disk"] >= 10


def test_without_a_gpu_the_cpu_holds_it_or_offload_is_asked_for(llama_70b: AdapterSpec) -> None:
    with pytest.raises(DataError, match=r"85% of 64\.0 GiB of free CPU memory.*load\.offload"):
        place_for_inference(llama_70b, Memory((), 64 * GIB))
    small = place_for_inference(llama_70b, Memory((), 200 * GIB))
    assert small.device_map == {"": "cpu"}
    with pytest.raises(DataError, match=r"not even .* largest layer fits twice"):
        place_for_inference(with_load(llama_70b, offload=True), Memory((), 3 * GIB))


@pytest.fixture
def offloading_version(embedded_home: Path, sst2_dir: Path, tmp_path: Path) -> str:
    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=3, name="offload-sst2")
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"max_eval_samples": 8})})
    return build_from_spec(with_load(spec, offload=True), Registry(), tmp_path / "built").ref


def test_predict_on_a_base_partly_on_disk_answers_as_on_a_whole_one(
    offloading_version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = ["a gripping, funny film", "dull and far too long"]
    _, whole = predict(Registry(), offloading_version, texts)
    half_on_disk = {
        "bert.embeddings": "cpu",
        **{f"bert.encoder.layer.{i}": "cpu" if i < 3 else "disk" for i in range(6)},
        "bert.pooler": "disk",
        "classifier": "cpu",
    }
    placement = InferencePlacement(half_on_disk, 0, offload=True, devices=("cpu", "disk"))
    monkeypatch.setattr("flows.train_job.place_for_inference", lambda spec: placement)
    loaded = []

    def keep(spec: AdapterSpec, **options: object):  # type: ignore[no-untyped-def]
        loaded.append(load_base_model(spec, **options))
        return loaded[-1]

    monkeypatch.setattr("flows.train_job.load_base_model", keep)
    with pytest.warns(RuntimeWarning, match=r"spread over cpu, disk.*every forward pass \(slow\)"):
        _, offloaded = predict(Registry(), offloading_version, texts)
    query = loaded[0][0].bert.encoder.layer[4].attention.self.query
    assert is_offloaded(query.base_layer) and query.base_layer.weight.is_meta  # really on disk
    assert query.adapters["offload-sst2"].lora_A.weight.device.type == "cpu"
    for alone, disk in zip(whole, offloaded, strict=True):
        assert disk.probabilities == pytest.approx(alone.probabilities, abs=1e-5)
        assert disk.label == alone.label


def test_a_build_that_could_not_evaluate_is_refused_before_training(
    sst2_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build evaluates the saved adapter on a freshly loaded base: a base evaluation could not
    place fails in check_inputs, not after training; train evaluates the model it trained."""
    from flows import prepare_job
    from flows.prepare_job import check_inputs

    spec = minilm_sst2_spec("lora", sst2_dir / "en", steps=3)
    check_inputs(spec)
    monkeypatch.setattr(inference_placement, "free_memory", lambda **_: Memory((), 50 * 2**20))
    # without a GPU the training step is checked against the same memory, first (its own
    # tests: tests/flows/test_planning.py); here, as if it fitted
    with pytest.raises(DataError, match=r"one training step .* this machine \(CPU memory"):
        check_inputs(spec)
    monkeypatch.setattr(prepare_job, "_check_step_fits", lambda spec: None)
    with pytest.raises(DataError, match=r"weights take 86\.6 MiB.* 85% of 50\.0 MiB of free CPU"):
        check_inputs(spec)
    check_inputs(spec, evaluates_apart=False)
