"""Titans baseline LM: the Titans memory layer (GD with momentum and weight decay) + a static MLP, no CMS."""

from __future__ import annotations

from hopelab.config import ModelConfig
from hopelab.layers.fast_memory import DEFAULT_EXECUTION, Execution
from hopelab.layers.titans import TitansMemory
from hopelab.models.memory_lm import MemoryLM


class TitansLM(MemoryLM):
    variant = "titans"

    def __init__(self, cfg: ModelConfig, execution: Execution = DEFAULT_EXECUTION) -> None:
        super().__init__(cfg, TitansMemory, use_cms=False, execution=execution)
