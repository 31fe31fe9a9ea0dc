"""Long-format records shared by the probes (writers) and `analysis/` (readers), and the JSON files beside them.

One row per scalar, with an explicit pyarrow schema so every Parquet file of every run has the same
columns and dtypes. All writes are atomic: a temp file in the same directory, then `os.replace`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# Which run and which training step a row belongs to: the first columns of every long-format file.
_RUN_STEP_COLUMNS = [
    ("run_id", pa.string()),
    ("study", pa.string()),
    ("variant", pa.string()),
    ("scale", pa.string()),
    ("seed", pa.int64()),
    ("step", pa.int64()),
]

# Probe rows (`probes/*.parquet` in a run directory). Columns that do not apply to a row are null.
PROBE_SCHEMA = pa.schema(
    [
        *_RUN_STEP_COLUMNS,
        ("tokens", pa.int64()),  # training tokens seen at this step
        ("probe", pa.string()),  # cms | selfmod | surprise | gradflow | intervene | recall
        ("metric", pa.string()),
        ("layer", pa.int64()),
        ("component", pa.string()),  # k, v, q, eta, alpha, memory; a parameter group; intervene: the switch
        ("level", pa.int64()),  # CMS level index; intervene seq_loss / seq_bucket_loss: the probe sequence's index
        ("level_other", pa.int64()),  # the other level of a pair (cos_sim)
        ("param", pa.string()),  # parameter name (gradflow)
        # token position within the probe sequence (chunk end); intervene loss: the position predicted from,
        # seq_bucket_loss: the first position of the bucket (hopelab.interventions.evaluate); recall: the
        # distance bucket's lower edge
        ("position", pa.int64()),
        ("threshold", pa.float64()),  # surprise-gate threshold of a gate_pass_rate row
        ("value", pa.float64()),
    ]
)

# Training metrics (`metrics.parquet` in a run directory), also long format.
METRICS_SCHEMA = pa.schema(
    [
        *_RUN_STEP_COLUMNS,
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone makes 0600


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path` (mode as open() would give); on success rename it onto `path`, on
    failure delete it. Readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, _FILE_MODE)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
            f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """The parsed JSON file at `path`, or None when there is no such file. A file that is not JSON raises
    ValueError (json.JSONDecodeError); the caller decides whether that is an error or an unusable file."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    return json.loads(text)


def read_parquet(path: str | os.PathLike, schema: pa.Schema) -> pa.Table:
    return pq.read_table(path, schema=schema)
