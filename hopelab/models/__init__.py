"""The language models and the variant registry.

    build_model("hope", "tiny")              # a scale name
    build_model("hope_no_cms", model_config) # or a ModelConfig
    build_model("hope", "tiny", execution=Execution(compile=True, recompute=True))  # how its memories run
"""

from __future__ import annotations

import dataclasses

from torch import nn

from hopelab.config import ModelConfig, get_scale
from hopelab.errors import UserError
from hopelab.layers.fast_memory import (
    DEFAULT_EXECUTION,
    Execution,
    FastStateRecord,
    fast_memory_layers,
    trace_fast_states,
)

# variant -> (description, how it changes the HOPE config)
_HOPE_VARIANTS: dict[str, tuple[str, dict]] = {
    "hope": ("all mechanisms: self-referential Titans (DGD) + CMS + surprise gate", {}),
    "hope_no_cms": ("CMS replaced by a static MLP of the same width", {"use_cms": False}),
    "hope_no_selfmod": (
        "static k, v, q, η, α projections, v̂ = v; only M_memory adapts",
        {"selfmod": False},
    ),
    "hope_no_surprise": ("surprise gate off: every token writes", {"surprise_mode": "off"}),
}
HOPE_VARIANTS: tuple[str, ...] = tuple(_HOPE_VARIANTS)  # the variants built on self-referential Titans
VARIANTS: dict[str, str] = {
    **{name: desc for name, (desc, _) in _HOPE_VARIANTS.items()},
    "hope_attention": "causal softmax attention in place of self-referential Titans, then the same CMS",
    "titans": "static projections, one MLP memory updated by GD with momentum and weight decay, no CMS",
    "transformer": "pre-norm causal Transformer, same width, depth and tokenizer",
    "transformer_matched": "Transformer whose width is solved so its parameter count matches hope within 5%",
}


def resolve_config(config: str | ModelConfig) -> ModelConfig:
    if isinstance(config, ModelConfig):
        return dataclasses.replace(config)
    if isinstance(config, str):
        return get_scale(config).model
    raise TypeError(f"config must be a scale name or a ModelConfig, got {type(config).__name__}")


def variant_config(variant: str, config: str | ModelConfig) -> ModelConfig:
    """The ModelConfig a variant actually runs with (HOPE ablations flip one switch each)."""
    check_variant(variant)
    cfg = resolve_config(config)
    if variant in _HOPE_VARIANTS:
        cfg = dataclasses.replace(cfg, **_HOPE_VARIANTS[variant][1])
    elif variant == "transformer_matched":
        cfg = matched_transformer_config(cfg)
    return cfg


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise UserError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")


def build_model(variant: str, config: str | ModelConfig, execution: Execution = DEFAULT_EXECUTION) -> nn.Module:
    """A fresh model of `variant` at a scale name or ModelConfig (the variant's switches applied). `execution`
    says how its fast-memory layers run (implementation, compile, recompute); the Transformers have none."""
    from hopelab.models.hope import HopeLM
    from hopelab.models.hope_attention import HopeAttentionLM
    from hopelab.models.titans import TitansLM
    from hopelab.models.transformer import TransformerLM

    cfg = variant_config(variant, config)
    if variant in _HOPE_VARIANTS:
        model = HopeLM(cfg, execution)
    elif variant == "hope_attention":
        model = HopeAttentionLM(cfg, execution)
    elif variant == "titans":
        model = TitansLM(cfg, execution)
    else:  # transformer, transformer_matched (its width already solved by variant_config)
        model = TransformerLM(cfg)
    model.variant = variant
    return model


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def matched_transformer_config(cfg: ModelConfig, tolerance: float = 0.05) -> ModelConfig:
    """Same depth, heads and vocabulary as hope; the width (a multiple of n_heads) whose count at the standard
    4x feed-forward is nearest hope's, then the feed-forward width that closes the remaining gap."""
    import torch

    from hopelab.models.hope import HopeLM
    from hopelab.models.transformer import TransformerLM

    def n_params(c: ModelConfig) -> int:
        with torch.device("meta"):
            return count_parameters(TransformerLM(c))

    with torch.device("meta"):
        target = count_parameters(HopeLM(cfg))
    lo, hi = 1, 64 * cfg.dim // cfg.n_heads  # search dim = n_heads * m
    while lo < hi:  # smallest width whose count reaches the target
        mid = (lo + hi) // 2
        if n_params(dataclasses.replace(cfg, dim=cfg.n_heads * mid, mlp_hidden=None)) < target:
            lo = mid + 1
        else:
            hi = mid
    best = None
    for m in (lo - 1, lo):
        if m < 1:
            continue
        cand = dataclasses.replace(cfg, dim=cfg.n_heads * m, mlp_hidden=None)
        base = n_params(cand)
        per_hidden = cfg.n_layers * (2 * cand.dim + 1)  # one more unit per block: up row + bias, down column
        hidden = max(1, 4 * cand.dim + round((target - base) / per_hidden))
        cand = dataclasses.replace(cand, mlp_hidden=hidden)
        n = n_params(cand)
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (cand, n)
    cand, n = best
    if abs(n - target) / target > tolerance:
        raise UserError(f"no Transformer width matches hope's {target} parameters within {tolerance:.0%}")
    return cand


__all__ = [
    "DEFAULT_EXECUTION",
    "HOPE_VARIANTS",
    "VARIANTS",
    "Execution",
    "FastStateRecord",
    "build_model",
    "check_variant",
    "count_parameters",
    "fast_memory_layers",
    "trace_fast_states",
    "variant_config",
]
