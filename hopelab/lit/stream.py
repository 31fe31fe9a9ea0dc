"""The fast state a training step leaves for the next while a stream is read (`--set segments=K`, K > 1).

Step s trains on window s % K of the streams of group s // K (hopelab.data.sampler.StreamSampler): window 0
starts from the model's initial state, window j > 0 from the detached state window j − 1 left. One optimizer
step per window (truncated BPTT as RNN language models and Transformer-XL train), not one per stream: the
paper's slowest CMS level (32K tokens) then updates within a stream that costs one window of memory, where a
step over the whole stream would hold K windows of activations.

The carried state is part of every checkpoint (with the step that left it), so a run killed inside a stream
resumes with exactly the state it had. Under DDP each rank carries its rows of the global batch; the
checkpoint holds the whole batch's rows (gathered), and each rank takes its own back on resume.
"""

from __future__ import annotations

from typing import Any

import torch

from hopelab.models.streaming import from_tree, map_tensors, to_tree


class CarriedStream:
    def __init__(self, segments: int) -> None:
        self.segments = segments
        self.state: Any = None  # the state after step `step` (None at a stream's end)
        self.step: int | None = None
        self.global_rows = False  # loaded from a checkpoint: the rows of the whole global batch

    def take(self, step: int, rank: int, world: int, device: torch.device) -> Any:
        """The state window `step % K` starts from (None: a new stream)."""
        if step % self.segments == 0:
            self.state = None
            return None
        if self.state is None or self.step != step - 1:
            raise RuntimeError(f"streaming: step {step} continues a stream, but the carried state is from step "
                               f"{self.step}")
        state = self.state
        if self.global_rows and world > 1:  # this rank's rows, as StepBatches shards the batch
            state = map_tensors(lambda t: t[rank::world], state)
        self.global_rows = False
        return map_tensors(lambda t: t.to(device), state)

    def put(self, step: int, state: Any) -> None:
        """What step `step` left (detached); nothing is kept after a stream's last window."""
        self.state = None if (step + 1) % self.segments == 0 else state
        self.step = step

    def state_dict(self, strategy) -> dict[str, Any]:
        state = self.state
        if state is not None and strategy.world_size > 1:  # [world, b, ...] -> rows in global batch order
            state = map_tensors(lambda t: _interleave(strategy.all_gather(t)), state)
        state = map_tensors(lambda t: t.detach().cpu(), state)
        return {"step": self.step, "state": to_tree(state)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.step, self.state = saved["step"], from_tree(saved["state"])
        self.global_rows = True


def _interleave(gathered: torch.Tensor) -> torch.Tensor:
    """[world, b, ...] (rank r holding global rows r::world) -> [world·b, ...] in global row order."""
    return gathered.transpose(0, 1).reshape(-1, *gathered.shape[2:])
