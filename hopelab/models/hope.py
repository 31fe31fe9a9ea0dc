"""HOPE (Eq 94-97): self-referential Titans followed by a Continuum Memory System, in a pre-norm LM.

    h = x + SelfRefTitans(LN(x))          o_t = M_memory(q_t), memories updated in context by DGD
    y = h + CMS(LN(h))                    y_t = MLP^(f_K)(… MLP^(f_1)(o_t)) as residual increments

Ablations flip one switch of the config (hopelab.models.VARIANTS): use_cms, selfmod, surprise_mode.
Memory state never carries across calls unless the caller passes it (`state=`); streaming segment by
segment with carried state equals one parallel pass when every segment but the last is a multiple of
`stream_alignment` tokens (the chunk size and the CMS periods).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hopelab.config import ModelConfig
from hopelab.layers.cms import ContinuumMemory
from hopelab.layers.self_ref_titans import SelfReferentialTitans
from hopelab.models.sites import MemorySite, memory_sites
from hopelab.models.state import initial_states
from hopelab.models.transformer import MLP


def init_lm_weights(model: nn.Module, n_layers: int) -> None:
    """GPT-style init for plain Linear/Embedding modules; memory states and flagged modules keep theirs."""
    for name, mod in model.named_modules():
        if getattr(mod, "_keep_init", False):
            continue
        if isinstance(mod, nn.Linear):
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("W_o", "down")) else 0.02
            nn.init.normal_(mod.weight, 0.0, std)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.Embedding):
            nn.init.normal_(mod.weight, 0.0, 0.02)


class MemoryBlock(nn.Module):
    """Pre-norm block: an in-context memory mixer, then a CMS (or a static MLP)."""

    def __init__(self, cfg: ModelConfig, mixer: nn.Module, use_cms: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.titans = mixer
        self.ln2 = nn.LayerNorm(cfg.dim)
        if use_cms:
            self.cms = ContinuumMemory(cfg)
        else:
            self.mlp = MLP(cfg.dim, cfg.cms_hidden_mult * cfg.dim, cfg.dropout)

    def forward(self, x: torch.Tensor, state: dict):
        h, titans_state = self.titans(self.ln1(x), state.get("titans"))
        x = x + h  # [B, T, D]
        if hasattr(self, "cms"):
            delta, cms_state = self.cms(self.ln2(x), state.get("cms"))
            return x + delta, {"titans": titans_state, "cms": cms_state}
        return x + self.mlp(self.ln2(x)), {"titans": titans_state}


class MemoryLM(nn.Module):
    """Token embeddings (no positional embedding: order comes from the conv and the recurrence), blocks,
    final norm, tied output layer."""

    def __init__(self, cfg: ModelConfig, make_mixer, use_cms: bool) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(MemoryBlock(cfg, make_mixer(cfg), use_cms) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        init_lm_weights(self, cfg.n_layers)
        periods = cfg.cms_periods if use_cms else ()
        self.stream_alignment = math.lcm(cfg.chunk_size, *periods)

    def initial_states(self) -> dict[str, dict[str, torch.Tensor]]:
        return initial_states(self)

    def memory_sites(self) -> list[MemorySite]:
        return memory_sites(self)

    def forward(self, tokens: torch.Tensor, state: dict | None = None, return_state: bool = False):
        """tokens [B, T] -> logits [B, T, V] (and the new state when return_state)."""
        if state is not None and state["pos"] % self.stream_alignment:
            raise ValueError(
                f"streaming: every segment but the last must be a multiple of {self.stream_alignment} tokens "
                f"(chunk size and CMS periods); the state is at position {state['pos']}"
            )
        block_states = state["blocks"] if state is not None else [{}] * len(self.blocks)
        x = self.wte(tokens)  # [B, T, D]
        new_states = []
        for block, bs in zip(self.blocks, block_states):
            x, ns = block(x, bs)
            new_states.append(ns)
        logits = self.lm_head(self.ln_f(x))  # [B, T, V]
        if return_state:
            pos = (state["pos"] if state is not None else 0) + tokens.shape[1]
            return logits, {"blocks": new_states, "pos": pos}
        return logits


class HopeLM(MemoryLM):
    variant = "hope"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg, SelfReferentialTitans, cfg.use_cms)
