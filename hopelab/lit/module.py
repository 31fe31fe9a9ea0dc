"""The LightningModule: next-token cross-entropy on any hopelab variant, AdamW, warmup + cosine, clipping.

The resolved run config travels inside every checkpoint (`checkpoint["hopelab"]["config"]`), together with
the RNG states, so a checkpoint alone says what it is and a resumed run draws the same dropout masks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hopelab.config import ModelConfig, TrainConfig
from hopelab.data.synthetic import IGNORE_INDEX
from hopelab.errors import UserError
from hopelab.lit.stream import CarriedStream
from hopelab.models import DEFAULT_EXECUTION, Execution, build_model
from hopelab.models.streaming import read_window
from hopelab.optim import M3


class NonFiniteError(RuntimeError):
    """A loss (or another watched quantity) became NaN or inf: the run stops as failed at `step`."""

    def __init__(self, quantity: str, step: int, value: float) -> None:
        super().__init__(f"non-finite {quantity} ({value}) at step {step}")
        self.quantity = quantity
        self.step = step
        self.value = value


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """logits [B, T, V], targets [B, T] -> mean cross-entropy (or [B*T] per token with reduction='none').
    Targets equal to IGNORE_INDEX carry no loss (0 with reduction='none') and are left out of the mean: a
    synthetic task masks every position but its answers so (a corpus has none, every token counts)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                           reduction=reduction)


def lr_factor(step: int, train: TrainConfig) -> float:
    """Multiplier of the base lr at optimizer step `step`: linear warmup, then constant or cosine to 10%."""
    if train.warmup_steps > 0 and step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    if train.schedule == "cosine":
        span = max(1, train.steps - train.warmup_steps)
        progress = min(1.0, (step - train.warmup_steps) / span)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices; none on norms, biases, embeddings and meta-learned initial states."""
    no_decay_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    if hasattr(model, "initial_states"):  # values may be views of a stacked parameter: use their base
        for states in model.initial_states().values():
            no_decay_ids.update(id(t if t._base is None else t._base) for t in states.values())
    decay, no_decay = [], []
    for p in {id(p): p for p in model.parameters() if p.requires_grad}.values():
        (decay if p.ndim >= 2 and id(p) not in no_decay_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def rng_state() -> dict[str, Any]:
    """RNG states in plain types and tensors, so checkpoints load with torch.load(weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    numpy_state = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class LitLM(pl.LightningModule):
    """Wraps `build_model(variant, model_cfg, execution)`; a batch is (step [], x [B, T], y [B, T])."""

    def __init__(
        self,
        variant: str,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        run_config: dict[str, Any] | None = None,
        execution: Execution = DEFAULT_EXECUTION,
    ) -> None:
        super().__init__()
        self.variant = variant
        self.train_cfg = train_cfg
        self.run_config = run_config or {}
        self.model = build_model(variant, model_cfg, execution)
        self.last_grad_norm: torch.Tensor | None = None  # total grad norm before clipping
        self.stream = CarriedStream(train_cfg.segments)  # the fast state carried between steps when streaming
        align = getattr(self.model, "stream_alignment", 1)
        if train_cfg.segments > 1 and model_cfg.context_len % align:
            raise UserError(f"segments > 1 streams whole chunks: context_len {model_cfg.context_len} must be a "
                            f"multiple of chunk_size {align}")
        # what training_step runs the model with: None, the model itself; or its whole-model compile
        # (hopelab.models.cudagraphs.compile_whole, --cudagraphs): a function, so not a second submodule
        self.compiled_forward: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(tokens)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int):
        step, x, y = batch
        if int(step) != self.global_step:  # batches are a pure function of the step: resume must line up
            raise RuntimeError(f"data step {int(step)} does not match the optimizer step {self.global_step}")
        if self.stream.segments > 1:  # window step % K of a stream, from the state the previous step left
            state = self.stream.take(int(step), self.trainer.global_rank, self.trainer.world_size, x.device)
            logits, new_state = read_window(self.model, x, state)  # [B, T, V]
            self.stream.put(int(step), new_state)
        else:
            logits = (self.compiled_forward or self.model)(x)  # [B, T, V]
        loss = lm_loss(logits, y)
        train_loss = loss.detach()
        if self.stream.segments > 1:
            # a window after a stream's first does not reach the memories' initial states (its state is carried
            # and detached): their gradient is zero, not missing, so AdamW treats every step alike (a missing one
            # skips the parameter) and DDP's reducer, which expects one for every parameter, agrees with one device
            loss = loss + sum(0.0 * p.sum() for p in self.model.parameters())
        if self.trainer.world_size > 1:  # the global batch's loss; NaN/inf on any rank stops every rank
            train_loss = self.trainer.strategy.reduce(train_loss, reduce_op="mean")
        if not torch.isfinite(train_loss).item():
            raise NonFiniteError("train_loss", self.global_step + 1, float(train_loss))  # 1-based, as logged
        return {"loss": loss, "train_loss": train_loss}  # callbacks read `train_loss` from the step's outputs

    def configure_optimizers(self):
        t = self.train_cfg
        groups = param_groups(self.model, t.weight_decay)
        if t.optimizer in ("m3", "m3_ema"):  # Algorithm 1 on the decayed matrices (as Muon), AdamW on the rest
            groups = [dict(groups[0], m3=True), dict(groups[1], m3=False)]
            opt = M3(groups, lr=t.lr, adamw_betas=tuple(t.betas), averaging="ema" if t.optimizer == "m3_ema" else "sum")
        else:
            opt = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, t))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        max_norm = self.train_cfg.grad_clip if self.train_cfg.grad_clip > 0 else float("inf")
        params: Iterable[torch.Tensor] = [p for p in self.parameters() if p.grad is not None]
        self.last_grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm).detach()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["hopelab"] = {"config": self.run_config, "variant": self.variant, "rng": rng_state()}
        if self.stream.segments > 1:  # every rank takes part: the state's rows are gathered across devices
            checkpoint["hopelab"]["stream"] = self.stream.state_dict(self.trainer.strategy)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hopelab", {})
        if "rng" in saved:
            set_rng_state(saved["rng"])
        if "stream" in saved:
            self.stream.load_state_dict(saved["stream"])
