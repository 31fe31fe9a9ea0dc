"""The timed measurements of `hopelab bench`: a training step per variant, hope's chunked fast path against the
token-by-token reference, and the auditor's wall time.

Variants are interleaved within each repeat (A, B, C, then C, B, A, ...) so a slow minute of a shared machine
hits all of them alike: read the ratios of one run, not absolute numbers.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode

from hopelab.config import get_scale
from hopelab.lit.module import lm_loss
from hopelab.models import Execution, build_model, count_parameters

COMPILED = "+compile"  # suffix: built with Execution(compile=True), its fast-memory steps compiled
RECOMPUTED = "+recompute"  # suffix: built with Execution(recompute=True), those steps recomputed in backward
CUDAGRAPHS = "+cudagraphs"  # suffix (any variant, CUDA only): the whole model compiled, replayed as CUDA graphs
CAPTURED = "+captured"  # suffix (any variant, CUDA only): the eager model captured as CUDA graphs, not compiled
WHOLE_MODEL = (CUDAGRAPHS, CAPTURED)  # the suffixes that take the whole model, and no other suffix


@contextmanager
def count_saved_activations():
    """Bytes of tensors autograd saves for backward during the block: activation memory on any device."""
    box = {"bytes": 0}

    def pack(t: torch.Tensor):
        box["bytes"] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield box


def _loss(forward, x):
    """x [B, T+1], as the training sampler draws it: the loss training computes (no slicing of the logits).
    `forward`: the model, or its whole-model compile."""
    return lm_loss(forward(x[:, :-1]), x[:, 1:])


def _sync(device: str) -> None:
    """Wait for the GPU's queued work, so that a timer read after it measures the work."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step_timings(variants, scale: str, repeats: int, device: str, progress=None) -> dict[str, dict]:
    """fwd + bwd + AdamW step per variant, interleaved; returns {variant: {times, n_params, activation_bytes,
    matmul_flops, first_step_s, cuda_peak_bytes}}. FLOPs are those of matmul-type ops (torch's FlopCounterMode) in
    fwd + bwd: a machine-independent floor under the step's cost, against which the timed ratios show how
    efficiently each variant runs. "hope+compile" is hope built with `Execution(compile=True)`: its first step (the
    compile) is timed apart; its FLOPs and saved activations are counted on the eager step, which runs the same
    code uncompiled.
    "hope+recompute" is hope built with `Execution(recompute=True)`, counted as it runs (its FLOPs include the
    recomputation). "hope+cudagraphs" (any variant) runs the whole model compiled (compile_whole, CUDA graphs),
    first step timed apart; "+captured" captures the eager model (capture_whole), no compile. On CUDA,
    cuda_peak_bytes is the most memory allocated during the first timed step: parameters, gradients, optimizer
    state and activations (a CUDA graph's pool included); else None."""
    from hopelab.models.cudagraphs import capture_whole, compile_whole

    cfg = get_scale(scale)
    B, T = cfg.train.batch_size, cfg.model.context_len
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.model.vocab_size, (B, T + 1), generator=gen).to(device)
    setups = {}
    for v in variants:
        torch.manual_seed(0)
        compiled, graphed, captured = v.endswith(COMPILED), v.endswith(CUDAGRAPHS), v.endswith(CAPTURED)
        name = v.removesuffix(CUDAGRAPHS).removesuffix(CAPTURED).removesuffix(COMPILED).removesuffix(RECOMPUTED)
        model = build_model(name, scale, Execution(recompute=v.endswith(RECOMPUTED))).to(device)
        with FlopCounterMode(display=False) as flops:  # warm-up step, also counts FLOPs and saved activations
            with count_saved_activations() as saved:
                loss = _loss(model, x)
            loss.backward()
        counts = {"activation_bytes": saved["bytes"], "matmul_flops": flops.get_total_flops()}
        if compiled:  # the same weights, its steps compiled
            twin = build_model(name, scale, Execution(compile=True)).to(device)
            twin.load_state_dict(model.state_dict())
            model = twin
        _sync(device)
        t0 = time.perf_counter()
        forward = compile_whole(model) if graphed else capture_whole(model, x[:, :-1]) if captured else model
        if compiled or graphed:
            _loss(forward, x).backward()  # traces and compiles
        _sync(device)
        first_step_s = time.perf_counter() - t0
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
        opt.step()
        opt.zero_grad(set_to_none=True)
        setups[v] = {"forward": forward, "opt": opt, "times": [], "n_params": count_parameters(model),
                     "first_step_s": first_step_s, "cuda_peak_bytes": None, **counts}
    for r in range(repeats):
        for v in (variants if r % 2 == 0 else variants[::-1]):  # alternate the order: no variant always
            # follows the same neighbour into a slow minute
            s = setups[v]
            _sync(device)
            if device.startswith("cuda") and r == 0:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            _loss(s["forward"], x).backward()
            s["opt"].step()
            s["opt"].zero_grad(set_to_none=True)
            _sync(device)
            s["times"].append(time.perf_counter() - t0)
            if device.startswith("cuda") and r == 0:
                s["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
            if progress:
                progress()
    keys = ("times", "n_params", "activation_bytes", "matmul_flops", "first_step_s", "cuda_peak_bytes")
    return {v: {k: s[k] for k in keys}
            for v, s in setups.items()}


def chunked_vs_reference(scale: str, repeats: int, device: str, progress=None, compiled: bool = False):
    """hope fwd + bwd with the chunked fast path (eager, and compiled when asked) vs the token-by-token
    reference, interleaved. -> {"chunked": [s, ...], "reference": [...](, "compiled": [...])}"""
    cfg = get_scale(scale)
    torch.manual_seed(0)
    model = build_model("hope", scale).to(device)
    models = {"chunked": model}
    twins = {"reference": Execution(impl="reference")} | ({"compiled": Execution(compile=True)} if compiled else {})
    for impl, execution in twins.items():  # the same weights, run another way
        models[impl] = build_model("hope", scale, execution).to(device)
        models[impl].load_state_dict(model.state_dict())
    x = torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.model.context_len + 1)).to(device)
    out = {impl: [] for impl in models}
    for r in range(repeats + 1):
        for impl, m in models.items():
            _sync(device)
            t0 = time.perf_counter()
            _loss(m, x).backward()
            _sync(device)
            if r:  # the first round is warm-up
                out[impl].append(time.perf_counter() - t0)
            m.zero_grad(set_to_none=True)
            if progress:
                progress()
    return out


def audit_wall_time(scale: str, device: str) -> tuple[float, int]:
    """(seconds `hopelab audit` takes on a fresh hope model at `scale`, that model's parameter count)."""
    from hopelab.audit import audit

    torch.manual_seed(0)
    model = build_model("hope", scale)
    t0 = time.perf_counter()
    audit(model, vocab=model.config.vocab_size, device=device)
    return time.perf_counter() - t0, count_parameters(model)
