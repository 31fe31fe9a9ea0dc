"""Statistics over seeds, shared by the tables, figure 4 and the findings.

    mean_ci(values)                    -> MeanCI (mean, 95% t-interval half-width, n)
    compare(base_by_seed, other_by_seed) -> Delta (other - base, its 95% CI, p-value, which test)

With the same seeds on both sides (n >= 2) the comparison is paired by seed (t-test on the per-seed
differences); otherwise Welch's t-test across seeds (unequal variances, Welch-Satterthwaite df). One seed on
either side: the difference of means only, no interval and no p-value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from hopelab.run import STATUS_DONE

CONFIDENCE = 0.95
POWER = 0.80  # of the minimum detectable effect
PAIRED = "paired t-test by seed"
WELCH = "Welch t-test across seeds"
NO_TEST = "single seed: no test"


@dataclass(frozen=True)
class MeanCI:
    mean: float
    half: float  # half-width of the 95% t-interval; nan with one value
    n: int

    @property
    def lo(self) -> float:
        return self.mean - self.half

    @property
    def hi(self) -> float:
        return self.mean + self.half


@dataclass(frozen=True)
class Delta:
    delta: float  # mean(other) - mean(base); positive = other is worse (higher loss)
    lo: float
    hi: float
    p: float
    test: str
    n_base: int
    n_other: int

    @property
    def half(self) -> float:
        return (self.hi - self.lo) / 2


def _t(df: float) -> float:
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, df))


def mean_ci(values) -> MeanCI:
    x = np.asarray(pd.Series(values, dtype="float64").dropna(), dtype=float)
    n = len(x)
    if n == 0:
        return MeanCI(math.nan, math.nan, 0)
    if n == 1:
        return MeanCI(float(x[0]), math.nan, 1)
    half = _t(n - 1) * float(np.std(x, ddof=1)) / math.sqrt(n)
    return MeanCI(float(np.mean(x)), half, n)


def compare(base: pd.Series, other: pd.Series) -> Delta:
    """Δ = other − base. `base` and `other` are final losses indexed by seed (NaN = excluded)."""
    base = pd.Series(base, dtype="float64").dropna()
    other = pd.Series(other, dtype="float64").dropna()
    nb, no = len(base), len(other)
    if nb == 0 or no == 0:
        return Delta(math.nan, math.nan, math.nan, math.nan, NO_TEST, nb, no)
    delta = float(other.mean() - base.mean())
    if nb >= 2 and no >= 2 and set(base.index) == set(other.index):
        d = (other - base.reindex(other.index)).to_numpy()
        sd = float(np.std(d, ddof=1))
        half = _t(len(d) - 1) * sd / math.sqrt(len(d))
        p = float(stats.ttest_rel(other.to_numpy(), base.reindex(other.index).to_numpy()).pvalue) if sd > 0 else (
            math.nan)
        return Delta(delta, delta - half, delta + half, p, PAIRED, nb, no)
    if nb >= 2 and no >= 2:
        vb, vo = float(base.var(ddof=1)) / nb, float(other.var(ddof=1)) / no
        se = math.sqrt(vb + vo)
        if se == 0:
            return Delta(delta, delta, delta, math.nan, WELCH, nb, no)
        df = (vb + vo) ** 2 / (vb**2 / (nb - 1) + vo**2 / (no - 1))
        half = _t(df) * se
        p = float(stats.ttest_ind(other.to_numpy(), base.to_numpy(), equal_var=False).pvalue)
        return Delta(delta, delta - half, delta + half, p, WELCH, nb, no)
    return Delta(delta, math.nan, math.nan, math.nan, NO_TEST, nb, no)


def final_losses(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs with a finite final loss: the values every mean and test uses (failed ones excluded)."""
    ok = runs[(runs["status"] == STATUS_DONE) & runs["final_val_loss"].notna()]
    return ok[["scale", "run_name", "variant", "tag", "seed", "final_val_loss"]].reset_index(drop=True)


def seed_spread(runs: pd.DataFrame) -> float:
    """Seed-to-seed spread of final losses: the pooled standard deviation over seeds within each run name that
    has ≥ 2 finished seeds (sqrt of Σ (n_i − 1) s_i² / Σ (n_i − 1)); NaN when no run name has two."""
    ok = final_losses(runs)
    return _pooled_sd([g.to_numpy() for _, g in ok.groupby("run_name")["final_val_loss"]])


def detectable_effect(runs: pd.DataFrame, reference: str | None) -> float:
    """Minimum detectable |Δ| vs the reference run name: (t_{1−α/2} + t_{power}) · s_d / √n with n − 1 degrees
    of freedom, where s_d is the pooled standard deviation of the per-seed differences (run − reference) over
    the run names with the reference's n ≥ 2 seeds; never below seed_spread. NaN without such a pairing."""
    if reference is None:
        return math.nan
    ok = final_losses(runs)
    base = ok[ok["run_name"] == reference].set_index("seed")["final_val_loss"]
    diffs = []
    for _, g in ok[ok["run_name"] != reference].groupby("run_name"):
        g = g.set_index("seed")["final_val_loss"]
        if len(g) >= 2 and set(g.index) == set(base.index):
            diffs.append((g - base.reindex(g.index)).to_numpy())
    sd = _pooled_sd(diffs)
    if math.isnan(sd):
        return math.nan
    n = min(len(d) for d in diffs)
    mde = (_t(n - 1) + float(stats.t.ppf(POWER, n - 1))) * sd / math.sqrt(n)
    return max(mde, seed_spread(runs))


def _pooled_sd(groups: list[np.ndarray]) -> float:
    groups = [np.asarray(g, dtype=float) for g in groups if len(g) >= 2]
    dof = sum(len(g) - 1 for g in groups)
    if dof == 0:
        return math.nan
    return math.sqrt(sum(float(np.var(g, ddof=1)) * (len(g) - 1) for g in groups) / dof)


def losses_by_seed(runs: pd.DataFrame, scale: str, run_name: str) -> pd.Series:
    ok = final_losses(runs)
    sel = ok[(ok["scale"] == scale) & (ok["run_name"] == run_name)]
    return pd.Series(sel["final_val_loss"].to_numpy(), index=sel["seed"].astype(int).to_numpy(), dtype="float64")


def fmt_pm(mean: float, half: float, digits: int = 3, signed: bool = False) -> str:
    if mean is None or math.isnan(mean):
        return "—"
    s = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    s = s.replace("-", "−")  # a real minus sign in tables
    return f"{s} ± {half:.{digits}f}" if not math.isnan(half) else s


def fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "—"
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def fmt_pct(x: float) -> str:
    """A share as a percentage, two decimals; one that rounds to 100% without being 100% shows "> 99.99%"."""
    if x is None or math.isnan(x):
        return "n/a"
    if 0.99995 <= x < 1:
        return "> 99.99%"
    return f"{100 * x:.2f}%"


def wilson(p: float, n: float) -> tuple[float, float]:
    """Wilson score interval of a proportion p over n trials."""
    z = float(stats.norm.ppf(0.5 + CONFIDENCE / 2))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def newcombe(p_other: float, p_base: float, n: float) -> tuple[float, float]:
    """Interval of p_other − p_base, both over n trials (Newcombe 1998, method 10)."""
    lo_o, hi_o = wilson(p_other, n)
    lo_b, hi_b = wilson(p_base, n)
    d = p_other - p_base
    return d - math.hypot(p_other - lo_o, hi_b - p_base), d + math.hypot(hi_o - p_other, p_base - lo_b)
