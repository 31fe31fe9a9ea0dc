"""A pre-norm language model around a sequence mixer (an in-context memory: self-referential Titans or Titans;
or causal attention), each block followed by a CMS or a static MLP. HOPE (hopelab.models.hope), the Titans
baseline (hopelab.models.titans) and Hope-Attention (hopelab.models.hope_attention) are this model with their
mixer.

Memory state never carries across calls unless the caller passes it (`state=`); streaming segment by
segment with carried state equals one parallel pass when every segment but the last is a multiple of
`stream_alignment` tokens (the chunk size of SR-Titans or Titans; 1 for attention).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hopelab.config import ModelConfig
from hopelab.layers.cms import CMSLevelState, ContinuumMemory
from hopelab.layers.embedding import TokenEmbedding
from hopelab.layers.fast_memory import (
    DEFAULT_EXECUTION,
    PROJECTION_STD,
    Execution,
    FastMemory,
    init_projection,
    memory_key,
    residual_std,
)
from hopelab.models.sites import MemorySite, memory_sites
from hopelab.models.transformer import MLP


@dataclass
class MemoryBlockState:
    mixer: Any  # the mixer's own typed state (SelfRefTitansState, TitansState); None for attention
    cms: tuple[CMSLevelState, ...] | None  # one per CMS level; None where a static MLP replaces the CMS


@dataclass
class MemoryLMState:
    blocks: list[MemoryBlockState]
    pos: int  # tokens consumed


class MemoryBlock(nn.Module):
    """Pre-norm block: a sequence mixer, then a CMS (or a static MLP). The mixer is any module with
    `forward(x, state) -> (y, new_state)` and `reset_parameters()`: a FastMemory or an attention layer."""

    def __init__(self, cfg: ModelConfig, mixer: nn.Module, use_cms: bool, execution: Execution) -> None:
        super().__init__()
        self.n_layers = cfg.n_layers
        self.ln1 = nn.LayerNorm(cfg.dim)
        self.mixer = mixer
        self.ln2 = nn.LayerNorm(cfg.dim)
        if use_cms:
            self.cms = ContinuumMemory(cfg, execution)
        else:
            self.mlp = MLP(cfg.dim, cfg.cms_hidden_mult * cfg.dim, cfg.dropout)

    def reset_parameters(self) -> None:
        """GPT-2's init of the mixer's and the CMS's projections, or of the MLP's (its down projection writes
        into the residual stream)."""
        self.mixer.reset_parameters()
        if hasattr(self, "cms"):
            self.cms.reset_parameters()
        else:
            init_projection(self.mlp.up)
            init_projection(self.mlp.down, residual_std(self.n_layers))

    def forward(self, x: torch.Tensor, state: MemoryBlockState | None):
        mixer_state, cms_state = (state.mixer, state.cms) if state is not None else (None, None)
        h, mixer_state = self.mixer(self.ln1(x), mixer_state)
        x = x + h  # [B, T, D]
        if hasattr(self, "cms"):
            delta, cms_state = self.cms(self.ln2(x), cms_state)
            return x + delta, MemoryBlockState(mixer_state, cms_state)
        return x + self.mlp(self.ln2(x)), MemoryBlockState(mixer_state, None)


class MemoryLM(nn.Module):
    """Token embeddings (no positional embedding: order comes from the conv and the recurrence), blocks,
    final norm, tied output layer."""

    def __init__(self, cfg: ModelConfig, make_mixer: Callable[[ModelConfig, Execution], nn.Module], use_cms: bool,
                 execution: Execution = DEFAULT_EXECUTION) -> None:
        super().__init__()
        self.config = cfg
        self.execution = execution
        self.wte = TokenEmbedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(
            MemoryBlock(cfg, make_mixer(cfg, execution), use_cms, execution) for _ in range(cfg.n_layers)
        )
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        self.reset_parameters()
        # SR-Titans and Titans run whole chunks from a chunk-start state; a CMS level carries an unfinished
        # block's gradients (hopelab.layers.cms), so its period does not constrain where a segment ends
        mixers = [b.mixer for b in self.blocks if isinstance(b.mixer, FastMemory)]
        self.stream_alignment = math.lcm(*(m.chunk_tokens for m in mixers))

    def reset_parameters(self) -> None:
        """GPT-2's init of the embedding and every block's projections, once every module exists (modules
        draw their own init as they are made; this pass comes after, in module order, so a seed draws the
        same numbers). The tied embedding is drawn twice: the lm_head's draw is the one it keeps."""
        nn.init.normal_(self.wte.weight, 0.0, PROJECTION_STD)
        for block in self.blocks:
            block.reset_parameters()
        init_projection(self.lm_head)

    def initial_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """The meta-learned initial state of every memory, keyed like the trace (hopelab.models.trace_fast_states):
        {key: {name: tensor (a view of a parameter)}}, e.g. "blocks.0.mixer.k", "blocks.0.cms.levels.1"."""
        return {
            memory_key(name, sub_key): states
            for name, mod in self.named_modules()
            if isinstance(mod, FastMemory)
            for sub_key, states in mod.initial_states().items()
        }

    def memory_sites(self) -> list[MemorySite]:
        """Where this model keeps in-context memories (hopelab.models.sites): what the probes read."""
        return memory_sites(self)

    def forward(self, tokens: torch.Tensor, state: MemoryLMState | None = None, return_state: bool = False):
        """tokens [B, T] -> logits [B, T, V] (and the new state when return_state)."""
        if state is not None and state.pos % self.stream_alignment:
            raise ValueError(
                f"streaming: every segment but the last must be a multiple of {self.stream_alignment} tokens "
                f"(the chunk size); the state is at position {state.pos}"
            )
        block_states = state.blocks if state is not None else [None] * len(self.blocks)
        x = self.wte(tokens)  # [B, T, D]
        new_states = []
        for block, bs in zip(self.blocks, block_states):
            x, ns = block(x, bs)
            new_states.append(ns)
        logits = self.lm_head(self.ln_f(x))  # [B, T, V]
        if return_state:
            pos = (state.pos if state is not None else 0) + tokens.shape[1]
            return logits, MemoryLMState(new_states, pos)
        return logits
