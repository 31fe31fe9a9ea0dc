"""The whole model as one compiled graph, replayed as CUDA graphs (`--cudagraphs`).

On a GPU the eager chunk loop is bound by kernel launches: a `small` HOPE step launches tens of thousands of small
kernels, each a few microseconds of work. The whole forward traces as one graph with no host synchronisation
(tests/test_gpu_guards.py keeps it so), so torch.compile(mode="reduce-overhead") can compile it, forward and the
backward AOTAutograd derives, and replay each as a CUDA graph: one launch per graph, whatever the chunk count.

`compile_whole(model)` returns the compiled forward as a plain function: the model keeps its own eager forward
(evaluation, probes and checkpoints see the same module and state-dict keys as ever), and only the training step
calls the compiled one. The tests compile it with mode="default" on CPU: the same wrapping, minus the replay.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hopelab.errors import UserError

CUDAGRAPHS_MODE = "reduce-overhead"  # torch.compile's mode that replays the compiled graphs as CUDA graphs


def compile_whole(model: nn.Module, mode: str | None = CUDAGRAPHS_MODE,
                  backend: str = "inductor") -> Callable[[torch.Tensor], torch.Tensor]:
    """tokens [B, T] -> logits [B, T, V], the whole model one graph (fullgraph: a graph break is an error, not a
    silent split into many graphs). Every call is a new training step: CUDA graph outputs of the previous call
    may be overwritten, so keep none of them across calls (the loss computed from the logits is a fresh tensor).
    `backend` "aot_eager" (tests): the same trace and AOTAutograd backward, run by eager kernels (mode None)."""
    compiled = torch.compile(model, mode=mode, backend=backend, fullgraph=True, dynamic=False)
    replays = mode == CUDAGRAPHS_MODE

    def forward(tokens: torch.Tensor) -> torch.Tensor:
        if replays:  # evaluation between steps runs eager: tell the CUDA graph trees a new step begins
            torch.compiler.cudagraph_mark_step_begin()
        return compiled(tokens)

    return forward


def capture_whole(model: nn.Module, tokens: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The eager forward and backward captured as two CUDA graphs, without compiling (torch.cuda.
    make_graphed_callables): what replaying alone gains, in seconds where compiling the whole model takes
    minutes. `tokens` [B, T] on the device fixes the shapes; later tokens are copied into a buffer of that
    shape. The model's own forward is replaced: give it a model of its own. For measuring (`hopelab bench`,
    variant+captured)."""
    model.train()
    return torch.cuda.make_graphed_callables(model, (tokens.clone(),), allow_unused_input=True)


def check_cudagraphs(accelerator: str, compile: bool = False) -> None:
    """UserError unless `--cudagraphs` can run: a CUDA device, asked for or found by `auto`."""
    if compile:
        raise UserError("--cudagraphs compiles the whole model, the SR-Titans and CMS steps with it: drop --compile")
    if accelerator not in ("auto", "gpu", "cuda") or not torch.cuda.is_available():
        where = "torch sees no CUDA device" if not torch.cuda.is_available() else f"--accelerator {accelerator}"
        raise UserError(f"--cudagraphs replays CUDA graphs and needs a CUDA device ({where}); on CPU use --compile")
