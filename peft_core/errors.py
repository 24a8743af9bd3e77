"""The errors peft_core raises for user mistakes.

Every message says what was given, what was expected and what to do. Callers (the CLI, the flows)
catch :class:`PeftCoreError` and print the message; nothing else should escape for bad input.
"""

from __future__ import annotations

__all__ = [
    "AdapterExistsError",
    "AdapterFormatError",
    "AdapterNotFoundError",
    "BaseModelMismatchError",
    "CheckpointMismatchError",
    "ConfigError",
    "NotEstimableError",
    "NotMergeableError",
    "PeftCoreError",
    "TargetError",
    "TrainingDivergedError",
]


class PeftCoreError(Exception):
    """Base class of every error peft_core raises on purpose."""


class ConfigError(PeftCoreError, ValueError):
    """A method configuration is invalid (checked on construction)."""


class TargetError(PeftCoreError):
    """Targets matched nothing, or matched a module type the method cannot adapt."""


class TrainingDivergedError(PeftCoreError, ArithmeticError):
    """A step's loss was not a number and left the weights that train NaN or infinite: no later
    step can bring them back, so training stops there rather than running on. Also ten steps in
    a row whose loss was not a number (fp16 skipped each): nothing is being learned."""


class AdapterExistsError(PeftCoreError):
    """An adapter of that name is already in the model."""

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(message)
        self.name = name  # the name taken


class AdapterNotFoundError(PeftCoreError, KeyError):
    """No adapter of that name is in the model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NotMergeableError(PeftCoreError):
    """The method has no weight delta (bottleneck adapters, full fine-tuning)."""

    @classmethod
    def on_quantized_weights(cls, name: str, module_name: str) -> NotMergeableError:
        """Adapter ``name`` sits on a quantised layer (``module_name`` is the first)."""
        return cls(
            f"adapter {name!r} sits on quantised weights ({module_name}, ...): merging would "
            "re-quantise the sum and lose most of the adapter; pc.quantize.dequantize_base(model) "
            "first stores them as the values they compute with, then it merges"
        )


class AdapterFormatError(PeftCoreError):
    """A saved adapter folder is missing files, has unexpected tensors or unreadable metadata."""


class BaseModelMismatchError(PeftCoreError):
    """The adapter was trained on a different base model than the one it is loaded onto."""


class CheckpointMismatchError(PeftCoreError, ValueError):
    """A resume checkpoint was written by a different run (other trainable parameters, more
    steps, or another sharding); the run refuses it rather than train from the wrong state."""


class NotEstimableError(PeftCoreError):
    """A training step's memory cannot be measured on fake tensors: the step reads a tensor's
    values (some methods' forward does), which fake tensors do not have."""
