"""Wall time of an audit on one of hopelab's own models (e.g. the `small` scale hope, ~20M parameters)."""

from __future__ import annotations

import time
from typing import Any

from hopelab.config import apply_overrides, get_scale


def bench_audit(variant: str = "hope", scale: str = "small", *, seq_len: int = 64, batch: int = 2,
                dtype: str = "auto", overrides: dict[str, Any] | None = None,
                threads: int | None = None) -> dict[str, Any]:
    """Build `variant` at `scale`, audit it, return {wall_s, n_params, verdict, timings_s, report}."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    from hopelab.audit.checks import audit
    from hopelab.models import build_model, count_parameters

    cfg = get_scale(scale).model
    if overrides:
        cfg = apply_overrides(cfg, overrides, "model config")
    model = build_model(variant, cfg)
    t0 = time.perf_counter()
    report = audit(model, seq_len=seq_len, batch=batch, dtype=dtype, target=f"{variant}@{scale}")
    wall = time.perf_counter() - t0
    return {"variant": variant, "scale": scale, "n_params": count_parameters(model), "wall_s": round(wall, 2),
            "verdict": report.verdict, "timings_s": report.timings, "report": report}
