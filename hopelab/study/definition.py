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
from dataclasses import dataclass, field
from typing import Any

from hopelab.config import MODEL_KEYS, SCALES, TRAIN_KEYS, coerce_value
from hopelab.errors import UserError

# The seed of a run is the study's seed index (it names the run directory); it is not an override.
FORBIDDEN_KEYS = {"seed": "seeds come from the study (--seeds N), not from an override"}
RESERVED_NAMES = ("list", "show", "run")  # `hopelab study list|show|run` are commands, not studies
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Cell:
    """One run name of a study: a variant, an optional tag, and its overrides."""

    variant: str
    tag: str = ""  # tells apart cells of one variant (run name "hope-tau0.01")
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides
    scales: tuple[str, ...] | None = None  # None: every scale the study runs at; else only these
    note: str = ""  # one line shown by `hopelab study show`
    data: str | None = None  # this cell's data (e.g. "synthetic:mqar?pairs=16"); None: the study's --data

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
        if self.data is not None:
            from hopelab.data.synthetic import is_synthetic, parse_synthetic

            if not isinstance(self.data, str) or not is_synthetic(self.data):
                raise UserError(f"{where}: data must be a synthetic task 'synthetic:TASK?...' (a corpus is "
                                "given to the whole study with --data)")
            try:
                parse_synthetic(self.data)
            except UserError as err:
                raise UserError(f"{where}: {err}") from None
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
