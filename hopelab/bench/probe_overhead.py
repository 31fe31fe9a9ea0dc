"""Probe overhead: the same run with probes on and off, at a scale's default checkpoint cadence.

    from hopelab.bench.probe_overhead import probe_overhead
    probe_overhead("tiny", steps=100)   # {"with_probes_s": ..., "without_probes_s": ..., "overhead": ..., ...}

`overhead` compares the runs' wall times: `pairs` pairs, the order reversed in every other pair (on, off,
off, on, ...) so neither the process's first run nor a drifting machine favours one side; it is the mean of
the per-pair ratios, still noisy on a shared machine. `probe_share` is the time spent inside the probes over
the probed runs' wall time (the same quantity measured within each run, so much less noisy).
"""

from __future__ import annotations

import tempfile
from typing import Any

from hopelab.run import RunSpec, train_one


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
    pairs: int = 2,
) -> dict[str, Any]:
    """Train `variant` with probes on and off, `pairs` times each, in a scratch directory; the wall times."""
    quiet = progress if progress is not None else (lambda step, total, loss: None)
    runs: dict[bool, list] = {True: [], False: []}
    order = [p for pair in range(pairs) for p in ((True, False) if pair % 2 == 0 else (False, True))]  # probes on?
    with tempfile.TemporaryDirectory(prefix="hopelab-bench-", dir=out) as tmp:
        for i, probes in enumerate(order):
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
                tag=f"{'probes' if probes else 'noprobes'}{i}",
                accelerator=accelerator,
                devices=devices,
                precision=precision,
                probes=probes,
            )
            result = train_one(spec, progress=quiet)  # its RunState, as written to manifest.json
            if result.status != "done":
                raise RuntimeError(f"benchmark run failed: {result.reason}")
            runs[probes].append((result.wall_time_s, float(result.probe_time_s or 0.0), result))
    on, off = [w for w, _, _ in runs[True]], [w for w, _, _ in runs[False]]
    return {
        "scale": scale,
        "variant": variant,
        "steps": runs[True][0][2].last_step,
        "pairs": pairs,
        "ckpt_every": runs[True][0][2].ckpt_every,
        "with_probes_s": sum(on) / pairs,
        "without_probes_s": sum(off) / pairs,
        "overhead": sum(a / b for a, b in zip(on, off)) / pairs - 1.0,
        "probe_time_s": sum(p for _, p, _ in runs[True]) / pairs,
        "probe_share": sum(p for _, p, _ in runs[True]) / sum(on),
    }
