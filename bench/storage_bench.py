"""Storage: each method's adapter file against a fully fine-tuned copy of the model.

    python -m bench.storage_bench

Measured on all-MiniLM-L6-v2 (adapter files written by ``save_adapter``, against the size of the
model's own weights file) and computed for BERT-base (parameter counts on the meta device, fp32).
The seed paper's claim it puts in numbers: "125 adapters in the space of 2 fine-tuned models"
(Houlsby et al. 2019, for BERT-large adapters trained on GLUE).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import transformers as T

import peft_core as pc
from bench.common import write_result
from flows.quickstart import METHOD_RECIPES
from tests.helpers import minilm_path

METHODS = ("bitfit", "lora", "houlsby", "pfeiffer")


def minilm_rows(work: Path) -> list[dict[str, Any]]:
    """Adapter files as saved, against the model's weights file."""
    full = sum(f.stat().st_size for f in minilm_path().glob("*.safetensors"))
    rows = []
    for method in METHODS:
        model = T.AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
        fields, _ = METHOD_RECIPES[method]
        pc.add_adapter(model, method, pc.config_from_dict(fields))
        folder = pc.save_adapter(model, method, work / method)
        size = (Path(folder) / "adapter.safetensors").stat().st_size
        rows.append(_row("all-MiniLM-L6-v2 (measured files)", method, size, full))
    return rows


def bert_base_rows() -> list[dict[str, Any]]:
    """Computed for BERT-base (110M parameters) on the meta device, fp32."""
    config = T.BertConfig(num_labels=2)
    rows = []
    for method in METHODS:
        fields, _ = METHOD_RECIPES[method]
        costs = pc.plan(config, pc.config_from_dict(fields), head="classification")
        rows.append(
            _row("BERT-base (computed)", method, costs.adapter_bytes, 4 * costs.total_params)
        )
    return rows


def _row(model: str, method: str, adapter: int, full: int) -> dict[str, Any]:
    return {
        "model": model,
        "method": method,
        "adapter_bytes": adapter,
        "full_model_bytes": full,
        "adapter_share_percent": 100 * adapter / full,
        "adapters_in_two_full_models": int(2 * full // adapter),
    }


def main() -> None:
    T.logging.set_verbosity_error()
    rows = minilm_rows(Path(tempfile.mkdtemp(prefix="storage-"))) + bert_base_rows()
    for r in rows:
        print(f"{r['model']:<36} {r['method']:<9} {r['adapter_bytes'] / 2**20:7.2f} MiB  "
              f"{r['adapters_in_two_full_models']:>5} adapters in 2 full models")  # fmt: skip
    print(f"wrote {write_result('storage', {'rows': rows})}")


if __name__ == "__main__":
    main()
