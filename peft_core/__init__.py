"""peft_core: PEFT methods on plain transformers models.

    import peft_core as pc
    pc.add_adapter(model, "sst2", pc.LoRA(rank=8, alpha=16, targets=("q", "v")))
    ...train...
    pc.save_adapter(model, "sst2", "out/sst2")                  # our format
    pc.save_adapter(model, "sst2", "out/sst2-peft", format="peft")  # HF PEFT layout (LoRA)
    pc.load_adapter(other_model, "out/sst2", name="sst2")       # refuses a different base model

The adapted model stays a ``PreTrainedModel``: ``Trainer``, ``generate`` and ``save_pretrained``
keep working. This package imports neither Prefect, SQLAlchemy, boto3 nor MLflow.
"""

__version__ = "0.1.0"

from .combine import (
    CombineReport,
    MergeReport,
    combine_adapters,
    flatten_composition,
    leaf_weights,
    merge_adapters,
)
from .composition import (
    Average,
    Block,
    CompositionError,
    Fuse,
    Parallel,
    Stack,
    block_from_dict,
    block_to_dict,
)
from .config import (
    IA3,
    AnyPeft,
    BitFit,
    DoRA,
    FullFineTune,
    Fusion,
    Houlsby,
    LoRA,
    MethodConfig,
    Pfeiffer,
    config_from_dict,
    config_to_dict,
)
from .errors import (
    AdapterExistsError,
    AdapterFormatError,
    AdapterNotFoundError,
    BaseModelMismatchError,
    CheckpointMismatchError,
    ConfigError,
    NotEstimableError,
    NotMergeableError,
    PeftCoreError,
    TargetError,
    TrainingDivergedError,
)
from .fingerprint import Fingerprint, fingerprint
from .heads import HeadKind, detect_head
from .inject import (
    active_adapters,
    add_adapter,
    delete_adapter,
    is_merged,
    list_adapters,
    set_active,
    set_trainable,
)
from .io import adapter_state_dict, read_metadata
from .memory import StepMemory, estimate_step_memory
from .merge import merge, merged_state_dict, unmerge
from .methods import Method, all_methods, method_of, register_method
from .parallel import parallel_outputs
from .peft_format import one_rank_in_place
from .plan import Plan, build_on_meta, measure, plan
from .positions import position_limit
from .probes import (
    ProbeCheck,
    ProbeMismatchError,
    check_probes,
    probe_document,
    record_probes,
    write_probes,
)
from .quantize import is_quantized, quantize_base
from .roles import ROLES
from .routing import per_row
from .serialization import convert_adapter, load_adapter, save_adapter
from .sharding import ShardedWeights, check_shardable, shard_units, sharded_weight_bytes
from .training import SCHEDULES, Precision, Schedule, TrainResult, train

__all__ = [
    "IA3",
    "ROLES",
    "SCHEDULES",
    "AdapterExistsError",
    "AdapterFormatError",
    "AdapterNotFoundError",
    "AnyPeft",
    "Average",
    "BaseModelMismatchError",
    "BitFit",
    "Block",
    "CheckpointMismatchError",
    "CombineReport",
    "CompositionError",
    "ConfigError",
    "DoRA",
    "Fingerprint",
    "FullFineTune",
    "Fuse",
    "Fusion",
    "HeadKind",
    "Houlsby",
    "LoRA",
    "MergeReport",
    "Method",
    "MethodConfig",
    "NotEstimableError",
    "NotMergeableError",
    "Parallel",
    "PeftCoreError",
    "Pfeiffer",
    "Plan",
    "Precision",
    "ProbeCheck",
    "ProbeMismatchError",
    "Schedule",
    "ShardedWeights",
    "Stack",
    "StepMemory",
    "TargetError",
    "TrainResult",
    "TrainingDivergedError",
    "__version__",
    "active_adapters",
    "adapter_state_dict",
    "add_adapter",
    "all_methods",
    "block_from_dict",
    "block_to_dict",
    "build_on_meta",
    "check_probes",
    "check_shardable",
    "combine_adapters",
    "config_from_dict",
    "config_to_dict",
    "convert_adapter",
    "delete_adapter",
    "detect_head",
    "estimate_step_memory",
    "fingerprint",
    "flatten_composition",
    "is_merged",
    "is_quantized",
    "leaf_weights",
    "list_adapters",
    "load_adapter",
    "measure",
    "merge",
    "merge_adapters",
    "merged_state_dict",
    "method_of",
    "one_rank_in_place",
    "parallel_outputs",
    "per_row",
    "plan",
    "position_limit",
    "probe_document",
    "quantize_base",
    "read_metadata",
    "record_probes",
    "register_method",
    "save_adapter",
    "set_active",
    "set_trainable",
    "shard_units",
    "sharded_weight_bytes",
    "train",
    "unmerge",
    "write_probes",
]
