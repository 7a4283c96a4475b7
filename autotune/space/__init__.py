"""What may be tried: an engine's knobs, the rules between them, and what fits the hardware.

Everything here is decided before an engine starts, so that a configuration
that cannot run costs no GPU time.
"""

from autotune.space.feasibility import (
    CPU_RESERVE_GIB,
    DEFAULT_GPU_MEMORY_UTILIZATION,
    GPU_RESERVE_GIB,
    Assessment,
    Capacity,
    Deployment,
    assess,
    deployment_from_argv,
    gpus_per_engine,
    host_memory_gib,
    pipeline_stages,
)
from autotune.space.knobs import SPACES_DIR, Knob, SearchSpace
from autotune.space.model_shape import (
    DTYPE_BYTES,
    GIB,
    KV_DTYPE_BYTES,
    QUANTIZATION,
    ModelShape,
    WeightFormat,
    derived_max_len,
    load_model_config,
)
from autotune.space.rules import parse_rule, rule_holds, rule_names

__all__ = [
    "CPU_RESERVE_GIB",
    "DEFAULT_GPU_MEMORY_UTILIZATION",
    "DTYPE_BYTES",
    "GIB",
    "GPU_RESERVE_GIB",
    "KV_DTYPE_BYTES",
    "QUANTIZATION",
    "SPACES_DIR",
    "Assessment",
    "Capacity",
    "Deployment",
    "Knob",
    "ModelShape",
    "SearchSpace",
    "WeightFormat",
    "assess",
    "deployment_from_argv",
    "derived_max_len",
    "gpus_per_engine",
    "host_memory_gib",
    "load_model_config",
    "parse_rule",
    "pipeline_stages",
    "rule_holds",
    "rule_names",
]
