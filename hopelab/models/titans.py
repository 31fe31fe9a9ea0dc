"""Titans baseline LM: the Titans memory layer (GD with momentum and weight decay) + a static MLP, no CMS."""

from __future__ import annotations

from hopelab.config import ModelConfig
from hopelab.layers.titans import TitansMemory
from hopelab.models.hope import MemoryLM


class TitansLM(MemoryLM):
    variant = "titans"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg, TitansMemory, use_cms=False)
