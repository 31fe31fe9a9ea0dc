"""Probe overhead: the same run with probes on and off, at a scale's default checkpoint cadence.

    from hopelab.lit.bench import probe_overhead
    probe_overhead("tiny", steps=100)   # {"with_probes_s": ..., "without_probes_s": ..., "overhead": ..., ...}

`overhead` compares the two runs' training wall times (noisy on a shared machine); `probe_share` is the time
spent inside the probes of the probed run over its wall time (the same quantity measured within one run).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hopelab.lit.run import train_one
from hopelab.runs import RunSpec


def probe_overhead(
    scale: str = "tiny",
    steps: int | None = None,
    variant: str = "hope",
    seed: int = 0,
    data: str | None = None,
    accelerator: str = "auto",
    devices: str | int = "auto",
    precision: str | None = None,
    out: str | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    progress=None,
) -> dict[str, Any]:
    """Train `variant` twice (probes on, then off) in a scratch directory and return both wall times."""
    quiet = progress if progress is not None else (lambda step, total, loss: None)
    with tempfile.TemporaryDirectory(prefix="hopelab-bench-", dir=out) as tmp:
        results = {}
        for probes in (True, False):
            spec = RunSpec(
                variant=variant,
                scale=scale,
                seed=seed,
                study="bench",
                steps=steps,
                data=data,
                out=tmp,
                model_overrides=dict(model_overrides or {}),
                train_overrides=dict(train_overrides or {}),
                tag="probes" if probes else "noprobes",
                accelerator=accelerator,
                devices=devices,
                precision=precision,
                probes=probes,
            )
            result = train_one(spec, progress=quiet)
            if result.status != "done":
                raise RuntimeError(f"benchmark run failed: {result.reason}")
            manifest = json.loads((Path(result.run_dir) / "manifest.json").read_text())
            results[probes] = (result, manifest)
    (on, on_manifest), (off, _) = results[True], results[False]
    probe_time = float(on_manifest.get("probe_time_s") or 0.0)
    return {
        "scale": scale,
        "variant": variant,
        "steps": on.last_step,
        "ckpt_every": on_manifest.get("ckpt_every"),
        "with_probes_s": on.wall_time_s,
        "without_probes_s": off.wall_time_s,
        "overhead": on.wall_time_s / off.wall_time_s - 1.0,
        "probe_time_s": probe_time,
        "probe_share": probe_time / on.wall_time_s,
    }
