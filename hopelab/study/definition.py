"""A study in one typed definition: variants x scales x seeds x overrides.

    STUDY = Study(
        name="ablation",
        description="Table 1 of the dissection study",
        cells=[Cell("hope"), Cell("hope_no_cms"), Cell("transformer_matched", scales=("scaled",))],
        scales=("small",),   # what `hopelab study ablation` runs when no --scale is given
        seeds=3,             # seeds 0, 1, 2 of every cell; or per scale: {"tiny": 1, "small": 3}
    )

A cell is one run name (variant, or variant-tag) with its model/train overrides, applied on top of the
scale preset. Definitions validate when they are built: an unknown variant, scale or override key is a
UserError that names the valid choices.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from hopelab.config import SCALES, ModelConfig, TrainConfig
from hopelab.errors import UserError

MODEL_KEYS: tuple[str, ...] = tuple(f.name for f in fields(ModelConfig))
TRAIN_KEYS: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig))
# The seed of a run is the study's seed index (it names the run directory); it is not an override.
FORBIDDEN_KEYS = {"seed": "seeds come from the study (--seeds N), not from an override"}
RESERVED_NAMES = ("list", "show", "run")  # `hopelab study list|show|run` are commands, not studies
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _defaults(section: str) -> Any:
    return ModelConfig() if section == "model" else TrainConfig()


def coerce_value(section: str, key: str, value: Any) -> Any:
    """Check (and, for strings from the command line, convert) one override value against its field.

    The type is taken from the field's default: bool, int, float, str or a tuple (given as a list, a
    tuple, or a string like "8,32").
    """
    default = getattr(_defaults(section), key)
    where = f"{section} override {key}={value!r}"
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false")
    if isinstance(default, int):
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise UserError(f"{where}: expected an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise UserError(f"{where}: expected a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number")
        return float(value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            parts = [p for p in value.strip("()[] ").replace(" ", "").split(",") if p]
            value = tuple(parts)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list like 8,32")
        item_type = type(default[0]) if default else str
        try:
            return tuple(item_type(v) for v in value)
        except (TypeError, ValueError):
            raise UserError(f"{where}: expected a list of {item_type.__name__}") from None
    if isinstance(default, str):
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string")
        return value
    return value


def split_overrides(overrides: Mapping[str, Any], where: str = "override") -> tuple[dict, dict]:
    """Route flat `key=value` overrides to the model or the train config by field name."""
    model, train = {}, {}
    for key, value in overrides.items():
        if key in FORBIDDEN_KEYS:
            raise UserError(f"{where} {key!r}: {FORBIDDEN_KEYS[key]}")
        if key in MODEL_KEYS:
            model[key] = coerce_value("model", key, value)
        elif key in TRAIN_KEYS:
            train[key] = coerce_value("train", key, value)
        else:
            raise UserError(
                f"unknown {where} key {key!r}; valid model keys: {', '.join(MODEL_KEYS)}; "
                f"valid train keys: {', '.join(k for k in TRAIN_KEYS if k not in FORBIDDEN_KEYS)}"
            )
    return model, train


def parse_set_options(items: list[str] | None) -> dict[str, Any]:
    """`--set dim=32 --set cms_periods=8,32` -> {"dim": "32", "cms_periods": "8,32"} (values coerced later)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set dim=32")
        out[key.strip()] = value.strip()
    return out


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise UserError(f"unknown scale {scale!r}; choose one of: {', '.join(SCALES)}")
    return scale


@dataclass
class Cell:
    """One run name of a study: a variant, an optional tag, and its overrides."""

    variant: str
    tag: str = ""  # tells apart cells of one variant (run name "hope-tau0.01")
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides
    scales: tuple[str, ...] | None = None  # None: every scale the study runs at; else only these
    note: str = ""  # one line shown by `hopelab study show`

    @property
    def run_name(self) -> str:
        return f"{self.variant}-{self.tag}" if self.tag else self.variant

    def runs_at(self, scale: str) -> bool:
        return self.scales is None or scale in self.scales

    def validate(self, where: str) -> None:
        from hopelab.models import VARIANTS

        where = f"{where}, cell {self.run_name!r}"
        if self.variant not in VARIANTS:
            raise UserError(f"{where}: unknown variant {self.variant!r}; choose one of: {', '.join(VARIANTS)}")
        if self.tag and not _NAME_RE.match(self.tag):
            raise UserError(f"{where}: tag {self.tag!r} must be letters, digits, '_', '.' or '-'")
        if self.scales is not None:
            self.scales = tuple(self.scales)
            for s in self.scales:
                if s not in SCALES:
                    raise UserError(f"{where}: unknown scale {s!r}; choose one of: {', '.join(SCALES)}")
        for section, overrides, valid in (("model", self.model, MODEL_KEYS), ("train", self.train, TRAIN_KEYS)):
            for key in list(overrides):
                if key in FORBIDDEN_KEYS:
                    raise UserError(f"{where}: {section} override {key!r}: {FORBIDDEN_KEYS[key]}")
                if key not in valid:
                    raise UserError(
                        f"{where}: unknown {section} override key {key!r}; valid keys: {', '.join(valid)}"
                    )
                try:
                    overrides[key] = coerce_value(section, key, overrides[key])
                except UserError as err:
                    raise UserError(f"{where}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["run_name"] = self.run_name
        d["model"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model.items()}
        d["scales"] = list(self.scales) if self.scales is not None else None
        return d


@dataclass
class Study:
    """Variants x scales x seeds x overrides. Built (and validated) by a small file in `studies/`."""

    name: str
    description: str
    cells: list[Cell]
    scales: tuple[str, ...] = ("small",)  # run when no --scale is given; any scale may be asked for
    seeds: int | dict[str, int] = 1  # seeds 0..n-1 of every cell, or {scale: n} (unlisted: 1); --seeds N wins
    reference: str = ""  # the claim or table of the dissection study this regenerates

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise UserError(f"study name {self.name!r} must be letters, digits, '_', '.' or '-'")
        if self.name in RESERVED_NAMES:
            raise UserError(f"study name {self.name!r} is reserved; avoid: {', '.join(RESERVED_NAMES)}")
        where = f"study {self.name!r}"
        self.cells = list(self.cells)
        if not self.cells:
            raise UserError(f"{where} has no cells")
        for cell in self.cells:
            if not isinstance(cell, Cell):
                raise UserError(f"{where}: cells must be hopelab.study.Cell, got {type(cell).__name__}")
            cell.validate(where)
        seen: set[str] = set()
        for cell in self.cells:
            if cell.run_name in seen:
                raise UserError(f"{where}: run name {cell.run_name!r} appears twice; give the cells distinct tags")
            seen.add(cell.run_name)
        self.scales = (self.scales,) if isinstance(self.scales, str) else tuple(self.scales)
        if not self.scales:
            raise UserError(f"{where}: scales is empty; choose from: {', '.join(SCALES)}")
        for s in self.scales:
            if s not in SCALES:
                raise UserError(f"{where}: unknown scale {s!r}; choose one of: {', '.join(SCALES)}")
        per_scale = self.seeds if isinstance(self.seeds, dict) else {"*": self.seeds}
        for s, n in per_scale.items():
            if s != "*" and s not in SCALES:
                raise UserError(f"{where}: seeds for unknown scale {s!r}; choose from: {', '.join(SCALES)}")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise UserError(f"{where}: seeds must be a positive integer (or {{scale: n}}), got {self.seeds!r}")

    def seeds_at(self, scale: str) -> int:
        return self.seeds.get(scale, 1) if isinstance(self.seeds, dict) else self.seeds

    @property
    def seeds_text(self) -> str:
        if isinstance(self.seeds, dict):
            return " ".join(f"{s}:{n}" for s, n in self.seeds.items())
        return str(self.seeds)

    def cells_at(self, scale: str) -> list[Cell]:
        return [c for c in self.cells if c.runs_at(scale)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "reference": self.reference,
            "scales": list(self.scales),
            "seeds": dict(self.seeds) if isinstance(self.seeds, dict) else self.seeds,
            "cells": [c.to_dict() for c in self.cells],
        }
