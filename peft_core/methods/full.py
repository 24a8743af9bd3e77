"""Full fine-tuning: every weight trains. The baseline the PEFT methods are measured against.

It builds no adapter modules: the "adapter" is the whole model, saved as its full state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from ..roles import Target
from .base import Method, MethodConfig

__all__ = ["METHOD", "FullFineTune"]


@dataclass(frozen=True)
class FullFineTune(MethodConfig):
    """Every weight trains: the baseline the PEFT methods are measured against."""

    type: Literal["full"] = dataclasses.field(default="full", init=False)


class FullFineTuneMethod(Method):
    """No modules to build; the whole model (head included) trains."""

    type = "full"
    order = 80
    config_class = FullFineTune
    summary = "every weight trains (the baseline)"
    mergeable = False
    why_not_mergeable = "it is a full fine-tune: its weights are the model's; nothing to merge"
    trains_whole_model = True

    def targets(self, model: nn.Module, config: Any) -> list[Target]:
        return []


METHOD = FullFineTuneMethod()
