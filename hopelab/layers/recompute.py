"""Activation recomputation for the in-context memories' sequential steps.

A HOPE training step keeps every chunk's intermediates for the backward pass: at `small` (dim 256, 6 layers,
context 512, batch 8) that is 28.4 GiB, more than a 24 GB GPU holds. With recomputation on, each SR-Titans
chunk step and each CMS step keeps only its inputs (the chunk-start fast state and the chunk's tokens) and
runs its forward again inside the backward pass (torch.utils.checkpoint, non-reentrant): 4.9 GiB at `small`,
the same numbers (bit-identical losses and gradients on CPU), for one more forward of the memories. It changes
how a run executes, not what it computes (hopelab.models.recompute_chunks; `--recompute`).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def call_step(step, recompute: bool, *args):
    """step(*args); under recomputation (when gradients are being recorded) only args are kept for backward."""
    if recompute and torch.is_grad_enabled():
        return checkpoint(step, *args, use_reentrant=False)
    return step(*args)
