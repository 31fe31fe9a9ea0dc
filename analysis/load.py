"""A study directory on disk -> three tidy DataFrames with fixed dtypes.

    study = load_results("runs/ablation")          # the study root (holds study.json and one dir per scale)
    study = load_results("runs/ablation/small")    # or one scale's directory under it
    study.runs      # one row per run (RUN_DTYPES)
    study.metrics   # METRICS_SCHEMA rows of every run, plus run_name
    study.probes    # PROBE_SCHEMA rows of every run, plus run_name

Run directories are found by globbing `manifest.json`; `config.json`, `metrics.parquet` and `probes/*.parquet`
are read when present. A running or failed run (partial files, no final loss) loads; an unreadable file is
skipped with a line in `study.notes`. study.json, when present, gives the study's metadata and the runs that
have no directory yet (pending).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from hopelab.config import SCALES
from hopelab.errors import UserError
from hopelab.records import METRICS_SCHEMA, PROBE_SCHEMA, read_parquet
from hopelab.run import STATUS_DONE, STATUS_FAILED, RunDir
from hopelab.run.spec import parse_run_id

# One row per run. Config fields of interest are flattened from config.json ("model", "train", "spec").
RUN_DTYPES: dict[str, str] = {
    "run_id": "str",
    "study": "str",
    "scale": "str",
    "variant": "str",
    "run_name": "str",
    "tag": "str",
    "seed": "Int64",
    "status": "str",  # done | failed | running | pending (study.json only) | unknown
    "reason": "str",
    "failed_step": "Int64",
    "final_val_loss": "float64",
    "wall_time_s": "float64",
    "last_step": "Int64",
    "steps": "Int64",  # configured training steps
    "n_params": "Int64",
    "surprise_threshold": "float64",
    "surprise_mode": "str",
    "use_cms": "boolean",
    "selfmod": "boolean",
    "cms_periods": "str",  # "8,32"
    "memory": "str",
    "chunk_size": "Int64",
    "dim": "Int64",
    "n_layers": "Int64",
    "n_heads": "Int64",
    "context_len": "Int64",
    "vocab_size": "Int64",
    "batch_size": "Int64",
    "lr": "float64",
    "warmup_steps": "Int64",
    "schedule": "str",
    "ckpt_every": "Int64",
    "ref_unigram": "float64",  # reference val losses of the run's data (hopelab.data.references)
    "ref_bigram": "float64",
    "data": "str",
    "overrides": "str",  # JSON of the spec's model/train overrides
    "git_sha": "str",
    "hardware": "str",  # a one-line summary of manifest["hardware"]
    "probe_errors": "str",  # manifest["probe_errors"] joined with " | " (a probe that failed, why)
    "started": "str",
    "ended": "str",
    "path": "str",  # run directory relative to the study root
}

_MODEL_FIELDS = ("surprise_threshold", "surprise_mode", "use_cms", "selfmod", "memory", "chunk_size", "dim",
                 "n_layers", "n_heads", "context_len", "vocab_size")
_TRAIN_FIELDS = ("batch_size", "lr", "warmup_steps", "schedule", "ckpt_every")


def _frame_dtypes(schema: pa.Schema) -> dict[str, str]:
    kinds = {pa.string(): "str", pa.int64(): "Int64", pa.float64(): "float64"}
    return {f.name: kinds[f.type] for f in schema}


METRICS_DTYPES: dict[str, str] = {**_frame_dtypes(METRICS_SCHEMA), "run_name": "str"}
PROBE_DTYPES: dict[str, str] = {**_frame_dtypes(PROBE_SCHEMA), "run_name": "str"}


@dataclass
class StudyResults:
    """A study's results as read from its run directories (its definition is hopelab.study's `Study`):
    everything the figures, tables and report read. `scale` is set when one scale was asked for."""

    root: Path
    name: str
    runs: pd.DataFrame
    metrics: pd.DataFrame
    probes: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)  # study.json without its "runs"
    scale: str | None = None
    notes: list[str] = field(default_factory=list)  # files skipped, inconsistencies found

    @property
    def scales(self) -> list[str]:
        return order_scales(self.runs["scale"].dropna().unique())

    def runs_at(self, scale: str) -> pd.DataFrame:
        return self.runs[self.runs["scale"] == scale]


def order_scales(scales) -> list[str]:
    """Preset order (tiny < small < scaled) first, then any other name alphabetically."""
    known = list(SCALES)
    return sorted({str(s) for s in scales}, key=lambda s: (known.index(s) if s in known else len(known), s))


def empty_frame(dtypes: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series([], dtype=dtype) for name, dtype in dtypes.items()})


def typed(df: pd.DataFrame, dtypes: dict[str, str]) -> pd.DataFrame:
    """Exactly the columns of `dtypes`, in order, with those dtypes (missing columns become null)."""
    out = {}
    for name, dtype in dtypes.items():
        col = df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index, dtype="object")
        if dtype in ("Int64", "float64"):
            col = pd.to_numeric(col, errors="coerce")
        out[name] = col.astype(dtype)
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def _read_json(path: Path, notes: list[str]) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError) as err:
        notes.append(f"skipped unreadable {path.name} in {path.parent}: {err}")
        return None
    if not isinstance(obj, dict):
        notes.append(f"skipped {path}: not a JSON object")
        return None
    return obj


def _read_table(path: Path, schema: pa.Schema, notes: list[str]) -> pa.Table | None:
    try:
        return read_parquet(path, schema)
    except Exception as err:  # a truncated or foreign file must not stop the report
        notes.append(f"skipped unreadable {path}: {type(err).__name__}: {err}")
        return None


def _to_frame(tables: list[pa.Table], dtypes: dict[str, str]) -> pd.DataFrame:
    """Arrow tables of one schema -> one DataFrame with `dtypes` (a single conversion: fast)."""
    if not tables:
        return empty_frame(dtypes)
    df = pa.concat_tables(tables).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    return typed(df, dtypes)


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _hardware_summary(hw: Any) -> str | None:
    """One line: GPUs (or the CPU), then accelerator, devices, precision. Unknown layouts: key=value."""
    if not hw:
        return None
    if not isinstance(hw, dict):
        return str(hw)
    parts = []
    gpus = hw.get("gpus") or hw.get("device_names")
    if gpus:
        counts: dict[str, int] = {}
        for name in gpus:
            counts[str(name)] = counts.get(str(name), 0) + 1
        parts.append(", ".join(f"{n}× {name}" for name, n in counts.items()))
    elif hw.get("cpu_count") or hw.get("processor") or hw.get("machine"):
        cpu = hw.get("processor") or hw.get("machine") or "CPU"
        parts.append(f"CPU {cpu}" + (f", {hw['cpu_count']} cores" if hw.get("cpu_count") else ""))
    for key in ("accelerator", "num_devices", "precision", "strategy"):
        if hw.get(key) not in (None, ""):
            parts.append(f"{key} {hw[key]}")
    if not parts:
        parts = [f"{k}={v}" for k, v in hw.items()]
    return "; ".join(parts)


def _run_row(run: RunDir, root: Path, notes: list[str]) -> dict[str, Any] | None:
    manifest = _read_json(run.manifest, notes)
    if manifest is None:
        return None
    config = _read_json(run.config, notes) if run.config.exists() else None
    if config is None:
        notes.append(f"{run.path}: no readable config.json; identity taken from the directory layout")
        config = {}
    spec = config.get("spec") or {}
    model = config.get("model") or {}
    train = config.get("train") or {}

    row: dict[str, Any] = run.layout_identity()
    row.update(parse_run_id(str(manifest.get("run_id") or "")) or {})
    for key in ("study", "scale", "variant", "seed"):
        if spec.get(key) not in (None, ""):
            row[key] = spec[key]
    if spec:
        row["tag"] = spec.get("tag") or ""
    row["variant"] = config.get("variant") or row.get("variant")
    row["scale"] = config.get("scale") or row.get("scale")
    row.setdefault("tag", "")
    if row.get("variant"):
        row["run_name"] = f"{row['variant']}-{row['tag']}" if row["tag"] else row["variant"]
    row["run_id"] = manifest.get("run_id") or (
        f"{row.get('study')}/{row.get('scale')}/{row.get('run_name')}/seed{row.get('seed')}"
    )

    row["status"] = manifest.get("status") or "unknown"
    row["reason"] = manifest.get("reason")
    row["failed_step"] = manifest.get("failed_step")
    row["final_val_loss"] = _finite(manifest.get("final_val_loss"))
    row["wall_time_s"] = _finite(manifest.get("wall_time_s"))
    row["last_step"] = manifest.get("last_step")
    row["git_sha"] = manifest.get("git_sha")
    row["hardware"] = _hardware_summary(manifest.get("hardware"))
    errors = manifest.get("probe_errors")
    row["probe_errors"] = " | ".join(map(str, errors)) if isinstance(errors, list) else (errors or None)
    row["started"] = manifest.get("started")
    row["ended"] = manifest.get("ended")
    row["n_params"] = config.get("n_params")
    row["steps"] = spec.get("steps") or train.get("steps")
    row["data"] = spec.get("data")
    overrides = {**(spec.get("model_overrides") or {}), **(spec.get("train_overrides") or {})}
    row["overrides"] = json.dumps(overrides, sort_keys=True) if overrides else ""
    for key in _MODEL_FIELDS:
        row[key] = model.get(key)
    for key in _TRAIN_FIELDS:
        row[key] = train.get(key)
    refs = (config.get("data") or {}).get("references") or {}
    row["ref_unigram"], row["ref_bigram"] = _finite(refs.get("unigram")), _finite(refs.get("bigram"))
    periods = model.get("cms_periods")
    row["cms_periods"] = ",".join(str(int(p)) for p in periods) if periods else None
    row["path"] = str(run.path.relative_to(root)) if run.path.is_relative_to(root) else str(run.path)
    return row


def _read_probe_files(paths: list[Path], notes: list[str]) -> list[pa.Table]:
    """All probe files of a run in one dataset read (fast); file by file when one of them is unreadable."""
    if not paths:
        return []
    try:
        return [ds.dataset([str(p) for p in paths], schema=PROBE_SCHEMA, format="parquet").to_table()]
    except Exception:  # noqa: BLE001 - find the bad file(s), keep the rest
        return [t for t in (_read_table(p, PROBE_SCHEMA, notes) for p in paths) if t is not None]


def _read_run_tables(run: RunDir, row: dict[str, Any], notes: list[str]) -> tuple[list, list]:
    """The run's metrics and probe tables (Arrow), with the identity columns set from the run's own files."""
    tables: list[tuple[str, pa.Table]] = []
    if run.metrics.exists():
        t = _read_table(run.metrics, METRICS_SCHEMA, notes)
        tables += [("metrics", t)] if t is not None else []
    tables += [("probes", t) for t in _read_probe_files(run.probe_files(), notes)]
    metrics, probes = [], []
    for kind, table in tables:
        if table.num_rows == 0:
            continue
        ids = [i for i in table.column("run_id").unique().to_pylist() if i is not None]
        if any(i != row["run_id"] for i in ids):
            notes.append(f"{run.path}: {kind} rows carry run_id {ids[0]!r}, the manifest says "
                         f"{row['run_id']!r}; the manifest's is used")
        n = table.num_rows
        for key in ("run_id", "study", "variant", "scale", "seed"):
            i = table.schema.get_field_index(key)
            table = table.set_column(i, key, pa.array([row.get(key)] * n, type=table.schema.field(key).type))
        table = table.append_column("run_name", pa.array([row.get("run_name")] * n, type=pa.string()))
        (metrics if kind == "metrics" else probes).append(table)
    return metrics, probes


def _resolve(path: Path, scale: str | None) -> tuple[Path, Path, str | None]:
    """(study root, directory to glob, scale filter) for a study root, a scale dir or a run dir."""
    if (path / "study.json").exists():
        return path, path, scale
    if (path.parent / "study.json").exists():  # one scale's directory
        if scale is not None and scale != path.name:
            raise UserError(f"{path} is the {path.name!r} scale directory; --scale {scale} does not match")
        return path.parent, path, path.name
    return path, path, scale


def load_results(path: str | Path, scale: str | None = None) -> StudyResults:
    """Load a study root, one scale's directory under it, or any directory holding run directories."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"study directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise UserError(f"{str(path)!r} is not a directory; give a study directory (<out>/<study>/)")
    root, search, scale = _resolve(path.resolve(), scale)
    notes: list[str] = []
    meta = _read_json(root / "study.json", notes) if (root / "study.json").exists() else None
    meta = meta or {}

    rows, metrics, probes = [], [], []
    for run in RunDir.find(search):
        row = _run_row(run, root, notes)
        if row is None:
            continue
        m, p = _read_run_tables(run, row, notes)
        rows.append(row)
        metrics += m
        probes += p

    # Runs named in study.json that have no directory yet (pending, or failed before starting).
    seen = {r["run_id"] for r in rows}
    for entry in meta.get("runs") or []:
        if not isinstance(entry, dict) or entry.get("run_id") in seen:
            continue
        rows.append({
            "run_id": entry.get("run_id"), "study": meta.get("study"), "scale": entry.get("scale"),
            "variant": entry.get("variant"), "run_name": entry.get("run_name"), "tag": entry.get("tag") or "",
            "seed": entry.get("seed"), "status": entry.get("status") or "pending", "reason": entry.get("reason"),
            "final_val_loss": _finite(entry.get("final_val_loss")), "wall_time_s": entry.get("wall_time_s"),
            "path": entry.get("path"), "steps": entry.get("steps"),
            "overrides": json.dumps(entry.get("overrides") or {}, sort_keys=True) if entry.get("overrides") else "",
            "surprise_threshold": (entry.get("overrides") or {}).get("surprise_threshold"),
        })

    runs = typed(pd.DataFrame(rows), RUN_DTYPES) if rows else empty_frame(RUN_DTYPES)
    if scale is not None:
        if len(runs) and scale not in set(runs["scale"].dropna()):
            have = ", ".join(order_scales(runs["scale"].dropna().unique())) or "none"
            raise UserError(f"no runs at scale {scale!r} in {path}; scales present: {have}")
        runs = runs[runs["scale"] == scale].reset_index(drop=True)
    if runs.empty or not (runs["status"] != "pending").any():
        raise UserError(f"no runs found under {path} (looked for <scale>/<run>/seed<k>/manifest.json); "
                        "give a study directory written by `hopelab study` or `hopelab train`")

    metrics_df = _to_frame(metrics, METRICS_DTYPES)
    probes_df = _to_frame(probes, PROBE_DTYPES)
    runs = _normalise_status(runs, metrics_df, notes)
    keep = set(runs["run_id"])
    metrics_df = metrics_df[metrics_df["run_id"].isin(keep)].reset_index(drop=True)
    probes_df = probes_df[probes_df["run_id"].isin(keep)].reset_index(drop=True)

    name = str(meta.get("study") or (runs["study"].dropna().iloc[0] if runs["study"].notna().any() else root.name))
    meta = {k: v for k, v in meta.items() if k != "runs"}
    return StudyResults(root=root, name=name, runs=runs, metrics=metrics_df, probes=probes_df, meta=meta, scale=scale,
                 notes=notes)


def _normalise_status(runs: pd.DataFrame, metrics: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """A done run without a final loss in its manifest takes its last val_loss; a non-finite one is failed."""
    runs = runs.copy()
    val = metrics[metrics["metric"] == "val_loss"].sort_values("step")
    last_val = {rid: (int(g["step"].iloc[-1]), float(g["value"].iloc[-1])) for rid, g in val.groupby("run_id")}
    for i in runs.index[(runs["status"] == STATUS_DONE) & runs["final_val_loss"].isna()]:
        rid = runs.at[i, "run_id"]
        if rid in last_val and math.isfinite(last_val[rid][1]):
            runs.at[i, "final_val_loss"] = last_val[rid][1]
            notes.append(f"{rid}: no final_val_loss in manifest.json; the last val_loss (step "
                         f"{last_val[rid][0]}) is used")
        else:
            runs.at[i, "status"] = STATUS_FAILED
            runs.at[i, "reason"] = "done, but its final validation loss is missing or not finite"
            if rid in last_val:
                runs.at[i, "failed_step"] = last_val[rid][0]
            notes.append(f"{rid}: marked failed (status done without a finite final loss)")
    return runs


def failure_label(run: pd.Series | dict) -> str:
    """"failed (NaN at step 120)": a failed/unfinished run's status as a table cell shows it."""
    status = str(run.get("status") or "unknown")
    reason = run.get("reason")
    reason = "" if reason is None or (isinstance(reason, float) and np.isnan(reason)) else str(reason).strip()
    step = run.get("failed_step")
    if step is not None and not pd.isna(step) and f"step {int(step)}" not in reason:
        reason = f"{reason} at step {int(step)}" if reason else f"at step {int(step)}"
    if len(reason) > 60:
        reason = reason[:57] + "..."
    return f"{status} ({reason})" if reason else status


__all__ = ["StudyResults", "load_results", "failure_label", "order_scales", "RUN_DTYPES", "METRICS_DTYPES",
           "PROBE_DTYPES", "typed", "empty_frame"]
