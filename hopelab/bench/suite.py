"""`hopelab bench`: every measurement in one run, so that its ratios hold on a noisy machine.

Timings are medians over repeats; a ratio is the median of per-repeat ratios of paired timings. The rows
(section, variant, metric, value, unit) go to hopelab.bench.report.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from hopelab.bench.report import write_bench_report
from hopelab.bench.timing import COMPILED, WHOLE_MODEL, audit_wall_time, chunked_vs_reference, train_step_timings
from hopelab.config import get_scale


def _paired_median(times: list[float], base: list[float]) -> float:
    """The median over repeats of base / times: the speedup of `times` over `base`, paired within each repeat."""
    return statistics.median(b / a for a, b in zip(times, base))


def _train_step_rows(timings: dict[str, dict], tokens: int) -> list[tuple]:
    rows = []
    base = timings["transformer"]["times"] if "transformer" in timings else None
    for v, t in timings.items():
        med = statistics.median(t["times"])
        rows += [("train_step", v, "step_s_median", med, "s"), ("train_step", v, "tokens_per_s", tokens / med, "tok/s"),
                 ("train_step", v, "n_params", t["n_params"], "count"),
                 ("train_step", v, "activation_bytes", t["activation_bytes"], "bytes"),
                 ("train_step", v, "matmul_flops", t["matmul_flops"], "FLOP"),
                 ("train_step", v, "matmul_flops_per_s", t["matmul_flops"] / med, "FLOP/s")]
        if v.endswith((COMPILED, *WHOLE_MODEL)):
            rows.append(("compile", v, "first_step_s", t["first_step_s"], "s"))
        if t["cuda_peak_bytes"] is not None:
            rows.append(("memory", v, "cuda_step_peak_allocated", t["cuda_peak_bytes"], "bytes"))
        if base:  # paired: step time over the Transformer's in the same repeat, then the median and quartiles
            ratios = [a / b for a, b in zip(t["times"], base)]
            q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
            rows += [("train_step", v, "ratio_to_transformer", statistics.median(ratios), "x"),
                     ("train_step", v, "ratio_q25", q1, "x"), ("train_step", v, "ratio_q75", q3, "x")]
    return rows


def _chunked_vs_reference_rows(impl: dict[str, list[float]]) -> list[tuple]:
    section, reference = "chunked_vs_reference", impl["reference"]
    rows = [(section, "hope", "chunked_s_median", statistics.median(impl["chunked"]), "s"),
            (section, "hope", "reference_s_median", statistics.median(reference), "s"),
            (section, "hope", "speedup", _paired_median(impl["chunked"], reference), "x")]
    if "compiled" in impl:
        rows += [(section, "hope" + COMPILED, "chunked_s_median", statistics.median(impl["compiled"]), "s"),
                 (section, "hope" + COMPILED, "speedup", _paired_median(impl["compiled"], reference), "x")]
    return rows


def _probe_overhead_rows(scale: str, steps: int) -> list[tuple]:
    from hopelab.bench.probe_overhead import probe_overhead  # trains through Lightning: imported when asked for

    res = probe_overhead(scale=scale, steps=steps)
    values = [("steps", steps, "count"), ("pairs", res["pairs"], "count"), ("with_probes_s", res["with_probes_s"], "s"),
              ("without_probes_s", res["without_probes_s"], "s"), ("overhead", res["overhead"], "fraction"),
              ("probe_share", res["probe_share"], "fraction")]
    return [("probe_overhead", "hope", metric, value, unit) for metric, value, unit in values]


def _memory_rows(device: str) -> list[tuple]:
    rows = []
    if device.startswith("cuda"):
        rows.append(("memory", "all", "cuda_max_allocated", torch.cuda.max_memory_allocated(), "bytes"))
    try:
        import resource

        rows.append(("memory", "all", "peak_rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "bytes"))
    except ImportError:  # not on Windows
        pass
    return rows


def run_bench(scale: str, variants: list[str], repeats: int, device: str, out: Path, probes: bool, audit: bool,
              console, reference: bool = True) -> Path:
    """Measure, then write out/bench-<scale>.parquet and out/README-<scale>.md; returns the README's path."""
    from rich.progress import Progress

    compiled = any(v.endswith(COMPILED) for v in variants)
    total = repeats * len(variants) + ((3 if compiled else 2) * (repeats + 1) if reference else 0)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("benchmarking", total=total)
        step = lambda: bar.advance(task)  # noqa: E731
        timings = train_step_timings(variants, scale, repeats, device, step)
        impl = chunked_vs_reference(scale, repeats, device, step, compiled) if reference else None
    cfg = get_scale(scale)
    rows = _train_step_rows(timings, cfg.train.batch_size * cfg.model.context_len)
    if impl is not None:
        rows += _chunked_vs_reference_rows(impl)
    if probes:
        try:  # two checkpoints at the scale's default cadence
            rows += _probe_overhead_rows(scale, steps=2 * cfg.train.ckpt_every)
        except Exception as err:  # the bench reports what it could measure
            console.print(f"[yellow]probe overhead not measured: {err}")
    if audit:
        wall, n = audit_wall_time("small" if scale == "tiny" else scale, device)
        rows += [("audit", "hope", "wall_s", wall, "s"), ("audit", "hope", "n_params", n, "count")]
    rows += _memory_rows(device)
    return write_bench_report(rows, scale, repeats, out)
