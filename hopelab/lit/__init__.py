"""Lightning training of every hopelab variant, with probes that write Parquet at every checkpoint.

    from hopelab.lit import train_one, RunResult
    result = train_one(RunSpec(variant="hope", scale="tiny", seed=0))   # the one entry point of studies

Submodules: module (LitLM), datamodule (step-indexed batches), trainer (Trainer factory, checkpoints),
probes (cms, selfmod, surprise, gradflow callbacks), metrics (train metrics, val loss), run (train_one),
bench (probe overhead).
"""

from __future__ import annotations

from hopelab.lit.run import RunResult, parse_overrides, resolve_configs, train_one

__all__ = ["RunResult", "parse_overrides", "resolve_configs", "train_one"]
