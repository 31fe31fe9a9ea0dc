"""What `hopelab bench` writes: its rows as `bench-<scale>.parquet` and a Markdown summary `README-<scale>.md`.

A row is (section, variant, metric, value, unit); `train_step` rows become the README's main table, every
other section a line under "Other measurements".
"""

from __future__ import annotations

import platform
import shlex
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch

from hopelab.bench.timing import CAPTURED, COMPILED, CUDAGRAPHS, RECOMPUTED
from hopelab.malloc import freed_memory_setting
from hopelab.records import atomic_path, write_parquet_atomic

BENCH_SCHEMA = pa.schema([("section", pa.string()), ("variant", pa.string()), ("metric", pa.string()),
                          ("value", pa.float64()), ("unit", pa.string())])
BENCH_COLUMNS = tuple(BENCH_SCHEMA.names)


def machine_info() -> dict:
    """What the README states about the machine the numbers were measured on."""
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


def _step_table(step: pd.DataFrame) -> list[str]:
    """The training-step table: one line per variant (`step`: variants x metrics)."""
    lines = ["| variant | params | step (ms) | tokens/s | × transformer (IQR) | GFLOP | × transformer FLOP | GFLOP/s "
             "| saved activations (MB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base_flops = step["matmul_flops"].get("transformer") if "transformer" in step.index else None
    for v, r in step.iterrows():
        ratio = (f"{r['ratio_to_transformer']:.2f} ({r['ratio_q25']:.2f}–{r['ratio_q75']:.2f})"
                 if "ratio_to_transformer" in r and r["ratio_to_transformer"] == r["ratio_to_transformer"] else "–")
        flop_ratio = f"{r['matmul_flops'] / base_flops:.2f}" if base_flops else "–"
        lines.append(f"| {v} | {int(r['n_params']):,} | {1000 * r['step_s_median']:.1f} | {r['tokens_per_s']:.0f} | "
                     f"{ratio} | {r['matmul_flops'] / 1e9:.2f} | {flop_ratio} | {r['matmul_flops_per_s'] / 1e9:.1f} | "
                     f"{r['activation_bytes'] / 2**20:.1f} |")
    return lines


def write_bench_report(rows: list[tuple], scale: str, repeats: int, out: Path) -> Path:
    """`rows` into out/bench-<scale>.parquet and out/README-<scale>.md; returns the README's path."""
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows, columns=list(BENCH_COLUMNS))
    df["value"] = df["value"].astype("float64")
    write_parquet_atomic(pa.Table.from_pandas(df, preserve_index=False, schema=BENCH_SCHEMA),
                         out / f"bench-{scale}.parquet")
    command = " ".join(shlex.quote(a) for a in ["hopelab", *sys.argv[1:]])
    lines = [f"# hopelab bench: {scale}", "", f"Command: `{command}`", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in machine_info().items()), "",
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
    if any(v.endswith(CUDAGRAPHS) for v in step.index):
        lines += [f"{CUDAGRAPHS}: the same variant with its whole forward and backward compiled as one graph and "
                  "replayed as CUDA graphs (`--cudagraphs`); its first step, which compiles, is under Other "
                  "measurements, as is each variant's peak CUDA memory during a step (memory, "
                  "cuda_step_peak_allocated).", ""]
    if any(v.endswith(CAPTURED) for v in step.index):
        lines += [f"{CAPTURED}: the same variant's eager forward and backward captured as CUDA graphs, not compiled "
                  "(torch.cuda.make_graphed_callables): what the replay alone gains.", ""]
    lines += _step_table(step)
    lines += ["", "## Other measurements", "", "| section | variant | metric | value | unit |",
              "|---|---|---|---:|---|"]
    for _, r in df[df.section != "train_step"].iterrows():
        lines.append(f"| {r.section} | {r.variant} | {r.metric} | {r.value:.4g} | {r.unit} |")
    path = out / f"README-{scale}.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path
