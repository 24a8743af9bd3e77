"""The model card (README.md) that travels with every tracked run and registered version."""

from __future__ import annotations

from typing import Any

import peft_core as pc

from .spec import AdapterSpec

__all__ = ["model_card"]


def model_card(spec: AdapterSpec, report: dict[str, Any], *, lineage: dict[str, Any]) -> str:
    """Markdown: what the adapter is, how it was trained, how well it does, how to load it."""
    method = spec.method.model_dump()
    metrics = report["metrics"]
    shown = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    trainable = f"{report['trainable_params']:,} of {report['total_params']:,}"
    budget = f"{report['steps']} (batch {spec.train.batch_size}, lr {spec.train.learning_rate})"
    lines = [
        f"# {spec.name}",
        "",
        spec.description or f"A {method['type']} adapter for {spec.task} ({spec.language}).",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{spec.base_model}` ({lineage.get('base_dtype', 'float32')}"
        f"{', ' + lineage['base_quantization'] if 'base_quantization' in lineage else ''}) |",
        f"| task / language | {spec.task} / {spec.language} |",
        f"| head | {spec.head.type} |",
        f"| method | {', '.join(f'{k}={v}' for k, v in method.items())} |",
        f"| trainable parameters | {trainable} |",
        f"| adapter size | {report['adapter_bytes']:,} bytes |",
        f"| steps | {budget} |",
        f"| dataset fingerprint | `{lineage.get('dataset_fingerprint', '?')}` |",
        f"| code version | `{lineage.get('code_version', '?')}` |",
        "",
        "## Evaluation (validation split)",
        "",
        *(f"- {k}: {v:.4f}" for k, v in sorted(shown.items())),
        "",
        "## Load it",
        "",
        "```python",
        "import peft_core as pc",
        "from registry import Registry",
        f"model = ...  # {spec.base_model} with a {spec.head.type} head",
        f'Registry().load_into(model, "{spec.name}@champion")  # or pc.load_adapter(model, folder)',
        "```",
        "",
        f"For a serving engine, `adapterops export {spec.name}@champion --for ENGINE --out DIR`",
        "(peft, vllm, lorax, merged or adapterhub) writes the files it reads, after listing what",
        "it would refuse or silently ignore, and says how to serve them.",
    ]
    if pc.method_of(method["type"]).places_itself:
        lines += [
            "",
            "Hugging Face peft runs this adapter, and its files are in the PEFT layout: load them",
            "with `peft.PeftModel.from_pretrained(base_model, folder)` as well.",
        ]
    elif pc.method_of(method["type"]).peft_type is not None:
        lines += [
            "",
            f"As {method['type']} it can also be saved in the Hugging Face PEFT layout",
            '(`pc.save_adapter(model, name, folder, format="peft")`) and loaded with',
            "`peft.PeftModel.from_pretrained(base_model, folder)`.",
        ]
    return "\n".join(lines) + "\n"
