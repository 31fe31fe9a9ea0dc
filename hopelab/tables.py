"""Long-format tables shared by the probes (writers) and `analysis/` (readers).

One row per scalar, with an explicit pyarrow schema so every Parquet file of every run has the same
columns and dtypes. All writes are atomic: a temp file in the same directory, then `os.replace`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

# Probe rows (`probes/*.parquet` in a run directory). Columns that do not apply to a row are null.
PROBE_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("study", pa.string()),
        ("variant", pa.string()),
        ("scale", pa.string()),
        ("seed", pa.int64()),
        ("step", pa.int64()),
        ("tokens", pa.int64()),  # training tokens seen at this step
        ("probe", pa.string()),  # cms | selfmod | surprise | gradflow
        ("metric", pa.string()),
        ("layer", pa.int64()),
        ("component", pa.string()),  # k, v, q, eta, alpha, memory; or a parameter group
        ("level", pa.int64()),  # CMS level index
        ("level_other", pa.int64()),  # the other level of a pair (cos_sim)
        ("param", pa.string()),  # parameter name (gradflow)
        ("position", pa.int64()),  # token position within the probe sequence (chunk end)
        ("threshold", pa.float64()),  # surprise-gate threshold of a gate_pass_rate row
        ("value", pa.float64()),
    ]
)

# Training metrics (`metrics.parquet` in a run directory), also long format.
METRICS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("study", pa.string()),
        ("variant", pa.string()),
        ("scale", pa.string()),
        ("seed", pa.int64()),
        ("step", pa.int64()),
        ("tokens", pa.int64()),
        ("metric", pa.string()),  # train_loss | val_loss | tokens_per_s | lr | grad_norm
        ("value", pa.float64()),
    ]
)


def rows_to_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table from dict rows; missing keys become null, extra keys are an error."""
    rows = list(rows)
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise ValueError(f"row has columns not in the schema: {sorted(extra)}")
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike) -> None:
    path = Path(path)
    fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_parquet(path: str | os.PathLike, schema: pa.Schema) -> pa.Table:
    return pq.read_table(path, schema=schema)
