"""Typed configuration: the model, the training run, and the scale presets.

Every run stores the resolved `ModelConfig` and `TrainConfig` (as plain dicts) in its `config.json` and
inside every checkpoint, so a checkpoint alone says what it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from hopelab.errors import UserError

MemoryKind = Literal["mlp", "linear"]
InnerGrad = Literal["full", "first_order"]
SurpriseMode = Literal["absolute", "relative", "off"]
CMSCombine = Literal["chain", "gated"]
CMSObjective = Literal["reconstruct", "kv"]
TokenizerName = Literal["bpe", "gpt2"]


@dataclass
class ModelConfig:
    """Architecture of every variant. Fields a variant does not use are ignored by it."""

    vocab_size: int = 8192
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    context_len: int = 128
    # --- self-referential Titans (Eq 83-93)
    chunk_size: int = 16  # C of Eq 90: projections and inner gradients use the chunk-start state
    memory: MemoryKind = "mlp"  # "mlp": M(z) = z + W1 σ(W2 z) (Eq 89); "linear": M(z) = W z (Eq 93)
    memory_hidden_mult: int = 2  # hidden width of the memory MLP, per head, as a multiple of head dim
    inner_grad: InnerGrad = "full"  # "full" keeps second-order terms; "first_order" treats the inner gradient's
    # error-side factors as data (what exactly: hopelab.ops.memory, "First order"; the same in every layer)
    chunk_grad: Literal["mean", "sum"] = "mean"  # C gradients taken at one chunk-start state: averaged
    # (TTT's mini-batch GD, stable for any C) or summed (Eq 90 literally; diverges for large C·η)
    inner_error_clip: float | None = 3.0  # Huber inner loss (hopelab.ops.memory.huber_error): each token's
    # inner error e_t is capped at this norm before it is written; None: the L2 loss as printed. 3 caps ~0.1%
    # of a trained tiny model's errors (k, v are unit vectors) and stops the runaway of README "Stability"
    eta_max: float = 1.0  # η_t ∈ (0, eta_max)
    eta_init: float = 0.5  # initial typical η_t (sets the readout bias); with chunk_grad="mean", per chunk
    alpha_init: float = 0.999  # initial typical α_t (sets the readout bias). Decay pulls every memory toward
    # zero weights, i.e. the identity map, where all six memories agree (k = v): 0.98 collapses them within
    # ~64 tokens (measured cos(k, v) 0.76 -> 0.99), 0.999 keeps them apart over a 512-token context
    conv_window: int = 4  # short causal depthwise convolution (Hope, Section 8.3)
    selfmod: bool = True  # False: static k, v, q, η, α projections and v̂ = v; only M_memory adapts
    # --- surprise gate (per-token inner loss of M_memory)
    # Default rule (README, "The surprise gate"): relative gating at z > 0, a token writes when its surprise is
    # above the running mean of its sequence so far. It passes 26-31% of tokens on a freshly built tiny model
    # (tests/test_model.py checks 5-95%); no absolute τ can do that at every scale and stage of training: the
    # surprise's floor moves (min 0.054 at init, 0.021 trained), and the dissection's τ = 0.02 passed 99.9%.
    surprise_mode: SurpriseMode = "relative"
    surprise_threshold: float = 0.0  # absolute: in surprise units, ½‖M(k) − v̂‖² (ops.surprise); relative: a z
    # --- Continuum Memory System (Eq 70-71)
    use_cms: bool = True  # False: a static MLP of the same width replaces the CMS
    cms_periods: tuple[int, ...] = (8, 32)  # C_ℓ: level ℓ updates its fast weights every C_ℓ tokens
    cms_hidden_mult: int = 4
    cms_combine: CMSCombine = "chain"  # "chain": Eq 70; "gated": learned per-token gate over levels
    cms_lr_init: float = 0.01  # initial in-context learning rate of each CMS level (learned)
    cms_error_clip: float | None = 4.0  # Huber cap of a CMS level's inner error, in units of √dim (the scale of
    # its LayerNorm-ed input): 32 at tiny, where errors have median 6 and 99.9th percentile 17 on text; it stops the
    # runaway that made 2 of 14 MQAR runs NaN (README, "Stability"). None: the L2 loss as printed
    cms_objective: CMSObjective = "reconstruct"  # a level's local objective: ½‖f(x) − W_v x‖², W_v = I at init
    # ("reconstruct"), or ½‖f(W_k x) − W_v x‖² on random learned projections ("kv"); see hopelab.layers.cms
    # --- Titans baseline (GD with momentum and weight decay)
    titans_momentum_init: float = 0.9
    titans_decay_init: float = 0.001  # as alpha_init: 1 − decay = 0.999 per token
    # --- Transformer baselines
    mlp_hidden: int | None = None  # feed-forward width; None: 4 * dim (transformer_matched solves it)
    # --- shared
    dropout: float = 0.0
    tokenizer: TokenizerName = "bpe"

    def __post_init__(self) -> None:
        self.cms_periods = tuple(int(p) for p in self.cms_periods)
        if self.dim % self.n_heads:
            raise UserError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.chunk_size < 1:
            raise UserError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.cms_objective not in ("reconstruct", "kv"):
            raise UserError(f"cms_objective must be reconstruct or kv, got {self.cms_objective!r}")
        if any(p < 1 for p in self.cms_periods):
            raise UserError(f"cms_periods must be >= 1, got {self.cms_periods}")
        if self.cms_error_clip is not None and not self.cms_error_clip > 0:
            raise UserError(f"cms_error_clip must be > 0 (or None: no clip), got {self.cms_error_clip}")
        if self.inner_error_clip is not None and not self.inner_error_clip > 0:
            raise UserError(f"inner_error_clip must be > 0 (or None: no clip), got {self.inner_error_clip}")
        if not 0 < self.alpha_init <= 1 or not 0 < self.eta_init < self.eta_max:
            raise UserError("need 0 < alpha_init <= 1 and 0 < eta_init < eta_max")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    # m3: Algorithm 1 as printed on matrices, AdamW on the rest; m3_ema: its prose's reading, moving-average
    # momenta and second moment (hopelab.optim.m3)
    optimizer: Literal["adamw", "m3", "m3_ema"] = "adamw"
    segments: int = 1  # K > 1: a sample is a stream of K consecutive context windows, one per optimizer step,
    # every fast state carried from window to window (hopelab.models.streaming); 1: independent windows
    grad_clip: float = 1.0
    ckpt_every: int = 50
    val_batches: int = 8
    seed: int = 0
    probe_seed: int = 1234  # the fixed held-out probe batch, the same for every variant


@dataclass(frozen=True)
class Scale:
    name: str
    model: ModelConfig
    train: TrainConfig
    description: str = ""


def _scales() -> dict[str, Scale]:
    return {
        "tiny": Scale(
            "tiny",
            # BPE 2048: in the same 300 steps hope ends 1.13 nats under its data's unigram loss (0.87 at 8192)
            # and the Transformer's step takes a third of the time (README, "What a study's numbers mean")
            ModelConfig(vocab_size=2048, dim=64, n_layers=2, n_heads=4, context_len=128, tokenizer="bpe"),
            # constant lr 3e-3: chosen by studies/lr_sweep.py (README has the table); the dissection's 3e-4 left
            # every variant within 0.3 nats of the unigram loss; warmup + cosine lost to a constant rate. 600
            # steps: at 300 the Transformer ends 0.83 nats under unigram, at 600 1.04 (hope 1.13 already at 300)
            TrainConfig(steps=600, batch_size=8, ckpt_every=100, lr=3e-3),
            "CPU-sized: dim 64, 2 layers, context 128, batch 8, byte-level BPE 2048 trained on the corpus, lr 3e-3",
        ),
        "small": Scale(
            "small",
            ModelConfig(vocab_size=50257, dim=256, n_layers=6, n_heads=4, context_len=512, tokenizer="gpt2"),
            TrainConfig(steps=2000, batch_size=8, ckpt_every=200),
            "the dissection study's small scale: dim 256, 6 layers, context 512, GPT-2 BPE",
        ),
        "scaled": Scale(
            "scaled",
            ModelConfig(vocab_size=50257, dim=512, n_layers=8, n_heads=8, context_len=512, tokenizer="gpt2"),
            TrainConfig(steps=2000, batch_size=8, ckpt_every=200),
            "the dissection study's scaled setting: dim 512, 8 layers, context 512, GPT-2 BPE",
        ),
    }


SCALES: dict[str, Scale] = _scales()


def check_scale(name: str) -> str:
    if name not in SCALES:
        raise UserError(f"unknown scale {name!r}; choose one of: {', '.join(SCALES)}")
    return name


def get_scale(name: str) -> Scale:
    return _scales()[check_scale(name)]  # a fresh copy: callers may mutate the dataclasses


def apply_overrides(cfg: Any, overrides: dict[str, Any], what: str = "config") -> Any:
    """Return a copy of a dataclass config with `overrides` applied; unknown keys are a UserError."""
    valid = {f.name: f for f in fields(cfg)}
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise UserError(f"unknown {what} key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
    return dataclasses.replace(cfg, **overrides)


def to_dict(cfg: Any) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


# ------------------------------------------------------------------------------------------------------
# Flat `key=value` overrides (`--set dim=32`, study cells), routed to ModelConfig or TrainConfig by name.
MODEL_KEYS: tuple[str, ...] = tuple(f.name for f in fields(ModelConfig))
TRAIN_KEYS: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig))


def _defaults(section: str) -> Any:
    return ModelConfig() if section == "model" else TrainConfig()


def coerce_value(section: str, key: str, value: Any) -> Any:
    """Check (and, for strings from the command line, convert) one override value against its field.

    The type is taken from the field's default: bool, int, float, str or a tuple (given as a list, a
    tuple, or a string like "8,32").
    """
    default = getattr(_defaults(section), key)
    where = f"{section} override {key}={value!r}"
    cls = ModelConfig if section == "model" else TrainConfig
    optional = "None" in str(next(f.type for f in fields(cls) if f.name == key))  # e.g. `float | None`
    if optional and (value is None or (isinstance(value, str) and value.lower() == "none")):
        return None
    if default is None:  # an optional int (e.g. mlp_hidden): "none" or an integer
        default = 0
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false")
    if isinstance(default, int):
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise UserError(f"{where}: expected an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise UserError(f"{where}: expected a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number")
        return float(value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            parts = [p for p in value.strip("()[] ").replace(" ", "").split(",") if p]
            value = tuple(parts)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list like 8,32")
        item_type = type(default[0]) if default else str
        try:
            return tuple(item_type(v) for v in value)
        except (TypeError, ValueError):
            raise UserError(f"{where}: expected a list of {item_type.__name__}") from None
    if isinstance(default, str):
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string")
        return value
    return value


def split_overrides(
    overrides: Mapping[str, Any], where: str = "override", forbidden: Mapping[str, str] | None = None
) -> tuple[dict, dict]:
    """Route flat `key=value` overrides to the model or the train config by field name, typed and checked.
    `forbidden` maps keys a caller does not accept to the reason."""
    forbidden = forbidden or {}
    model, train = {}, {}
    for key, value in overrides.items():
        if key in forbidden:
            raise UserError(f"{where} {key!r}: {forbidden[key]}")
        if key in MODEL_KEYS:
            model[key] = coerce_value("model", key, value)
        elif key in TRAIN_KEYS:
            train[key] = coerce_value("train", key, value)
        else:
            raise UserError(
                f"unknown {where} key {key!r}; valid model keys: {', '.join(MODEL_KEYS)}; "
                f"valid train keys: {', '.join(k for k in TRAIN_KEYS if k not in forbidden)}"
            )
    return model, train


def parse_set_options(items: list[str] | None) -> dict[str, Any]:
    """`--set dim=32 --set cms_periods=8,32` -> {"dim": "32", "cms_periods": "8,32"} (values coerced later)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set dim=32")
        out[key.strip()] = value.strip()
    return out
