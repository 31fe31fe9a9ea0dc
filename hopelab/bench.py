"""`hopelab bench`: speed and memory, measured in one run so ratios hold on a noisy machine.

Every timing is a median over repeats, and the variants are interleaved within each repeat (variant A, B, C,
A, B, C, ...) so a slow minute of a shared machine hits all of them alike. Read ratios, not absolute numbers.
"""

from __future__ import annotations

import platform
import shlex
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from hopelab.config import get_scale
from hopelab.lit.module import lm_loss
from hopelab.malloc import freed_memory_setting
from hopelab.models import build_model, compile_chunks, count_parameters, recompute_chunks, set_impl
from hopelab.tables import write_parquet_atomic

BENCH_COLUMNS = ("section", "variant", "metric", "value", "unit")


@contextmanager
def count_saved_activations():
    """Bytes of tensors autograd saves for backward during the block: activation memory on any device."""
    box = {"bytes": 0}

    def pack(t: torch.Tensor):
        box["bytes"] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield box


def _loss(model, x):
    """x [B, T+1], as the training sampler draws it: the loss training computes (no slicing of the logits)."""
    return lm_loss(model(x[:, :-1]), x[:, 1:])


COMPILED = "+compile"  # suffix of a variant timed with its SR-Titans chunk and CMS steps compiled (compile_chunks)
RECOMPUTED = "+recompute"  # suffix of a variant timed with those steps recomputed in backward (recompute_chunks)


def train_step_timings(variants, scale: str, repeats: int, device: str, progress=None) -> dict[str, dict]:
    """fwd + bwd + AdamW step per variant, interleaved; returns {variant: {times, n_params, activation_bytes,
    matmul_flops, first_step_s}}. FLOPs are those of matmul-type ops (torch's FlopCounterMode) in fwd + bwd: a
    machine-independent floor under the step's cost, against which the timed ratios show how efficiently each
    variant runs. "hope+compile" is hope with `compile_chunks`: its first step (the compile) is timed apart;
    its FLOPs and saved activations are counted on the eager step, which runs the same code uncompiled.
    "hope+recompute" is hope with `recompute_chunks`, counted as it runs (its FLOPs include the recomputation)."""
    cfg = get_scale(scale)
    B, T = cfg.train.batch_size, cfg.model.context_len
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.model.vocab_size, (B, T + 1), generator=gen).to(device)
    setups = {}
    for v in variants:
        torch.manual_seed(0)
        compiled = v.endswith(COMPILED)
        model = build_model(v.removesuffix(COMPILED).removesuffix(RECOMPUTED), scale).to(device)
        recompute_chunks(model, enabled=v.endswith(RECOMPUTED))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
        with FlopCounterMode(display=False) as flops:  # warm-up step, also counts FLOPs and saved activations
            with count_saved_activations() as saved:
                loss = _loss(model, x)
            loss.backward()
        counts = {"activation_bytes": saved["bytes"], "matmul_flops": flops.get_total_flops()}
        t0 = time.perf_counter()
        if compiled:
            opt.zero_grad(set_to_none=True)
            compile_chunks(model)
            _loss(model, x).backward()  # traces and compiles
        first_step_s = time.perf_counter() - t0
        opt.step()
        opt.zero_grad(set_to_none=True)
        setups[v] = {"model": model, "opt": opt, "times": [], "n_params": count_parameters(model),
                     "first_step_s": first_step_s, **counts}
    for r in range(repeats):
        for v in (variants if r % 2 == 0 else variants[::-1]):  # alternate the order: no variant always
            # follows the same neighbour into a slow minute
            s = setups[v]
            _sync(device)
            t0 = time.perf_counter()
            _loss(s["model"], x).backward()
            s["opt"].step()
            s["opt"].zero_grad(set_to_none=True)
            _sync(device)
            s["times"].append(time.perf_counter() - t0)
            if progress:
                progress()
    return {v: {k: s[k] for k in ("times", "n_params", "activation_bytes", "matmul_flops", "first_step_s")}
            for v, s in setups.items()}


def chunked_vs_reference(scale: str, repeats: int, device: str, progress=None, compiled: bool = False):
    """hope fwd + bwd with the chunked fast path (eager, and compiled when asked) vs the token-by-token
    reference, interleaved. -> {"chunked": [s, ...], "reference": [...](, "compiled": [...])}"""
    cfg = get_scale(scale)
    torch.manual_seed(0)
    model = build_model("hope", scale).to(device)
    models = {"chunked": model, "reference": model}
    if compiled:
        models["compiled"] = build_model("hope", scale).to(device)
        models["compiled"].load_state_dict(model.state_dict())
        compile_chunks(models["compiled"])
    x = torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.model.context_len + 1)).to(device)
    out = {impl: [] for impl in models}
    for r in range(repeats + 1):
        for impl, m in models.items():
            if impl != "compiled":
                set_impl(m, impl)
            _sync(device)
            t0 = time.perf_counter()
            _loss(m, x).backward()
            _sync(device)
            if r:  # the first round is warm-up
                out[impl].append(time.perf_counter() - t0)
            m.zero_grad(set_to_none=True)
            if progress:
                progress()
    set_impl(model, "chunked")
    return out


def audit_wall_time(scale: str, device: str) -> tuple[float, int]:
    from hopelab.audit import audit

    torch.manual_seed(0)
    model = build_model("hope", scale)
    t0 = time.perf_counter()
    audit(model, vocab=model.config.vocab_size, device=device)
    return time.perf_counter() - t0, count_parameters(model)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "freed CPU memory": freed_memory_setting(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_bench(scale, variants, repeats, device, out: Path, probes: bool, audit: bool, console, reference: bool = True) -> Path:
    from rich.progress import Progress

    rows = []
    compiled = any(v.endswith(COMPILED) for v in variants)
    total = repeats * len(variants) + ((3 if compiled else 2) * (repeats + 1) if reference else 0)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("benchmarking", total=total)
        step = lambda: bar.advance(task)  # noqa: E731
        timings = train_step_timings(variants, scale, repeats, device, step)
        impl = chunked_vs_reference(scale, repeats, device, step, compiled) if reference else None
    cfg = get_scale(scale)
    tokens = cfg.train.batch_size * cfg.model.context_len
    base = timings["transformer"]["times"] if "transformer" in timings else None
    for v, t in timings.items():
        med = statistics.median(t["times"])
        rows += [("train_step", v, "step_s_median", med, "s"), ("train_step", v, "tokens_per_s", tokens / med, "tok/s"),
                 ("train_step", v, "n_params", t["n_params"], "count"),
                 ("train_step", v, "activation_bytes", t["activation_bytes"], "bytes"),
                 ("train_step", v, "matmul_flops", t["matmul_flops"], "FLOP"),
                 ("train_step", v, "matmul_flops_per_s", t["matmul_flops"] / med, "FLOP/s")]
        if v.endswith(COMPILED):
            rows.append(("compile", v, "first_step_s", t["first_step_s"], "s"))
        if base:  # paired: step time over the Transformer's in the same repeat, then the median and quartiles
            ratios = [a / b for a, b in zip(t["times"], base)]
            q1, q2, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
            rows += [("train_step", v, "ratio_to_transformer", statistics.median(ratios), "x"),
                     ("train_step", v, "ratio_q25", q1, "x"), ("train_step", v, "ratio_q75", q3, "x")]
    if impl is not None:
        c, r = statistics.median(impl["chunked"]), statistics.median(impl["reference"])
        rows += [("chunked_vs_reference", "hope", "chunked_s_median", c, "s"),
                 ("chunked_vs_reference", "hope", "reference_s_median", r, "s"),
                 ("chunked_vs_reference", "hope", "speedup",  # paired within each repeat, like the step ratios
                  statistics.median(b / a for a, b in zip(impl["chunked"], impl["reference"])), "x")]
        if "compiled" in impl:
            rows += [("chunked_vs_reference", "hope" + COMPILED, "chunked_s_median", statistics.median(impl["compiled"]), "s"),
                     ("chunked_vs_reference", "hope" + COMPILED, "speedup",
                      statistics.median(b / a for a, b in zip(impl["compiled"], impl["reference"])), "x")]
    if probes:
        try:
            from hopelab.lit.bench import probe_overhead

            steps = 2 * cfg.train.ckpt_every  # two checkpoints at the scale's default cadence
            res = probe_overhead(scale=scale, steps=steps)
            on, off = res["with_probes_s"], res["without_probes_s"]
            rows += [("probe_overhead", "hope", "steps", steps, "count"), ("probe_overhead", "hope", "pairs", res["pairs"], "count"),
                     ("probe_overhead", "hope", "with_probes_s", on, "s"), ("probe_overhead", "hope", "without_probes_s", off, "s"),
                     ("probe_overhead", "hope", "overhead", res["overhead"], "fraction"),
                     ("probe_overhead", "hope", "probe_share", res["probe_share"], "fraction")]
        except Exception as err:  # the bench reports what it could measure
            console.print(f"[yellow]probe overhead not measured: {err}")
    if audit:
        wall, n = audit_wall_time("small" if scale == "tiny" else scale, device)
        rows += [("audit", "hope", "wall_s", wall, "s"), ("audit", "hope", "n_params", n, "count")]
    if device.startswith("cuda"):
        rows.append(("memory", "all", "cuda_max_allocated", torch.cuda.max_memory_allocated(), "bytes"))
    try:
        import resource

        rows.append(("memory", "all", "peak_rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "bytes"))
    except ImportError:
        pass
    return write_bench_report(rows, scale, repeats, out)


def write_bench_report(rows, scale, repeats, out: Path) -> Path:
    import pandas as pd
    import pyarrow as pa

    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows, columns=list(BENCH_COLUMNS))
    df["value"] = df["value"].astype("float64")
    table = pa.Table.from_pandas(df, preserve_index=False, schema=pa.schema(
        [("section", pa.string()), ("variant", pa.string()), ("metric", pa.string()), ("value", pa.float64()),
         ("unit", pa.string())]))
    write_parquet_atomic(table, out / f"bench-{scale}.parquet")
    machine = _machine()
    lines = [f"# hopelab bench: {scale}", "", f"Command: `{' '.join(shlex.quote(a) for a in ['hopelab', *sys.argv[1:]])}`",
             "", "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), "",
             f"Medians over {repeats} interleaved repeats (order reversed every other repeat). × transformer is "
             "the median of per-repeat paired ratios, with their interquartile range. Compare ratios measured in "
             "this one run only.", ""]
    step = df[df.section == "train_step"].pivot(index="variant", columns="metric", values="value")
    lines += ["## Training step (fwd + bwd + AdamW)", "",
              "GFLOP: matmul-type FLOPs of fwd + bwd (machine-independent); × transformer FLOP is the ratio the step "
              "time would have if every variant ran its matmuls equally fast.", ""]
    if any(v.endswith(COMPILED) for v in step.index):
        lines += [f"{COMPILED}: the same variant with its SR-Titans chunk step and CMS step under torch.compile "
                  "(`--compile`); its first step, which compiles, is under Other measurements.", ""]
    if any(v.endswith(RECOMPUTED) for v in step.index):
        lines += [f"{RECOMPUTED}: the same variant keeping only each SR-Titans chunk step's and CMS step's inputs for "
                  "backward and recomputing the rest there (`--recompute`): the same numbers, less memory.", ""]
    lines += ["| variant | params | step (ms) | tokens/s | × transformer (IQR) | GFLOP | × transformer FLOP | GFLOP/s "
              "| saved activations (MB) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base_flops = step["matmul_flops"].get("transformer") if "transformer" in step.index else None
    for v, r in step.iterrows():
        ratio = (f"{r['ratio_to_transformer']:.2f} ({r['ratio_q25']:.2f}–{r['ratio_q75']:.2f})"
                 if "ratio_to_transformer" in r and r["ratio_to_transformer"] == r["ratio_to_transformer"] else "–")
        flop_ratio = f"{r['matmul_flops'] / base_flops:.2f}" if base_flops else "–"
        lines.append(f"| {v} | {int(r['n_params']):,} | {1000 * r['step_s_median']:.1f} | {r['tokens_per_s']:.0f} | {ratio} | "
                     f"{r['matmul_flops'] / 1e9:.2f} | {flop_ratio} | {r['matmul_flops_per_s'] / 1e9:.1f} | "
                     f"{r['activation_bytes'] / 2**20:.1f} |")
    other = df[df.section != "train_step"]
    lines += ["", "## Other measurements", "", "| section | variant | metric | value | unit |", "|---|---|---|---:|---|"]
    for _, r in other.iterrows():
        lines.append(f"| {r.section} | {r.variant} | {r.metric} | {r.value:.4g} | {r.unit} |")
    path = out / f"README-{scale}.md"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path
