"""HOPE (Eq 94-97): self-referential Titans followed by a Continuum Memory System, in a pre-norm LM.

    h = x + SelfRefTitans(LN(x))          o_t = M_memory(q_t), memories updated in context by DGD
    y = h + CMS(LN(h))                    y_t = MLP^(f_K)(… MLP^(f_1)(o_t)) as residual increments

Ablations flip one switch of the config (hopelab.models.VARIANTS): use_cms, selfmod, surprise_mode.
"""

from __future__ import annotations

from hopelab.config import ModelConfig
from hopelab.layers.fast_memory import DEFAULT_EXECUTION, Execution
from hopelab.layers.self_ref_titans import SelfReferentialTitans
from hopelab.models.memory_lm import MemoryLM


class HopeLM(MemoryLM):
    variant = "hope"

    def __init__(self, cfg: ModelConfig, execution: Execution = DEFAULT_EXECUTION) -> None:
        super().__init__(cfg, SelfReferentialTitans, cfg.use_cms, execution)
