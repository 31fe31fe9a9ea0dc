"""A realistic synthetic study directory, written with the same schemas and writers as real runs.

    root = build_synthetic_study(tmp_path)                 # -> tmp_path/"synth" (the study root)
    root = build_synthetic_study(tmp_path, in_progress=True)  # plus a running run and a pending one

Layout (the on-disk contract of COMMON.md): `<out>/<study>/study.json` and
`<out>/<study>/<scale>/<run_name>/seed<k>/{config.json, manifest.json, metrics.parquet, probes/*.parquet}`.
Every variant at two scales with three seeds, a surprise-threshold sweep of hope at the first scale (run
names hope-tau<τ>, absolute gates; "relative" in `sweep` adds hope-relative), probe rows of every kind (cms,
selfmod, surprise, gradflow, intervene) and one failed run (NaN at a step).
Losses follow `TRUE_DELTA` (variant minus full HOPE) plus a per-seed offset shared by all variants and a small
per-run noise, so the analysis can be checked against known ground truth.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np

from hopelab.config import get_scale, to_dict
from hopelab.models import variant_config
from hopelab.records import METRICS_SCHEMA, PROBE_SCHEMA, rows_to_table, write_json_atomic, write_parquet_atomic
from hopelab.run import RunSpec

VARIANTS = ["hope", "hope_no_cms", "hope_no_selfmod", "hope_no_surprise", "titans", "transformer",
            "transformer_matched"]
BASE_LOSS = {"tiny": 5.40, "small": 4.80, "scaled": 4.50}
# final val loss of the variant minus full HOPE's, per scale (the dissection study's pattern)
TRUE_DELTA = {
    "hope": (0.0, 0.0),
    "hope_no_cms": (-0.015, -0.158),
    "hope_no_selfmod": (0.316, 1.412),
    "hope_no_surprise": (0.106, 0.004),
    "titans": (0.362, 0.45),
    "transformer": (-0.336, 0.593),
    "transformer_matched": (-0.30, 0.700),
    "hope-tau0.005": (0.073, 0.07),
    "hope-tau0.05": (0.006, 0.01),
    "hope-tau0.02": (0.002, 0.001),
    "hope-relative": (0.0, 0.0),  # the default gate: full HOPE under another name
    "hope-levels1": (-0.06, -0.06),  # settings other than the gate (`settings=`): a clear gain, a null one
    "hope-levels2": (0.0, 0.0),
}
RELATIVE_PASS = 0.35  # realised gate pass rate of a relative-mode run (the default gate)
SEED_OFFSET = [0.000, 0.021, -0.013, 0.008, -0.017]
# as hopelab.probes.surprise.THRESHOLD_GRID
GATE_GRID = [round(m * 10.0**e, 6) for e in range(-3, 3) for m in (1, 2, 5)]
_NORMAL = NormalDist()
FAILED = ("tiny", "hope_no_cms", 2, 120)  # scale, variant, seed, step at which the loss became NaN
# (unigram, bigram) reference val losses of each scale's data (hopelab.data.references), in config.json
REFERENCES = {"tiny": (5.80, 4.90), "small": (6.40, 4.60)}
N_PARAMS = {"hope": 1.00, "hope_no_cms": 0.93, "hope_no_selfmod": 0.90, "hope_no_surprise": 1.00, "titans": 0.85,
            "transformer": 0.80, "transformer_matched": 1.02}


def _model_config(variant: str, scale: str):
    if variant == "transformer_matched":  # a wider Transformer (the real width is solved against hope's count)
        cfg = variant_config("transformer", scale)
        return dataclasses.replace(cfg, dim=cfg.dim + 2 * cfg.n_heads * 4)
    return variant_config(variant, scale)


def _lognormal_quantile(q: float, mu: float, sigma: float) -> float:
    return math.exp(mu + sigma * _NORMAL.inv_cdf(q))


def _probe_rows(run: dict, model, steps_ckpt: list[int], rng: np.random.Generator) -> dict[str, list[dict]]:
    variant = run["variant"]
    rows: dict[str, list[dict]] = {"cms": [], "selfmod": [], "surprise": [], "gradflow": [], "intervene": []}
    n_layers, n_levels = model.n_layers, len(model.cms_periods)
    has_cms = variant.startswith("hope") and model.use_cms
    has_selfmod_probe = variant.startswith("hope") or variant == "titans"
    components = ["k", "v", "q", "eta", "alpha", "memory"] if (variant.startswith("hope") and model.selfmod) else [
        "memory"]
    gated = variant.startswith("hope")
    last = steps_ckpt[-1]
    for step in steps_ckpt:
        frac = step / last
        base = {**run, "step": step, "tokens": step * run["tokens_per_step"]}
        if has_cms:
            for layer in range(n_layers):
                for level in range(n_levels):
                    r = dict(base, probe="cms", layer=layer, level=level)
                    rows["cms"].append(dict(r, metric="param_norm",
                                            value=26.1 + 0.05 * frac + 0.02 * level + rng.normal(0, 0.01)))
                    rows["cms"].append(dict(r, metric="drift_prev", value=0.0 if step == 0 else
                                            29.2 + 0.1 * level + rng.normal(0, 0.05)))
                    rows["cms"].append(dict(r, metric="drift_init", value=3.0 * math.sqrt(frac) + rng.normal(0, 0.01)))
                    rows["cms"].append(dict(r, metric="rel_drift_meta_fast", value=0.3 + rng.normal(0, 0.01)))
                for other in range(1, n_levels):
                    rows["cms"].append(dict(base, probe="cms", metric="cos_sim", layer=layer, level=0,
                                            level_other=other, value=0.77 + rng.normal(0, 0.02)))
        if has_selfmod_probe:
            for layer in range(n_layers):
                for comp in components:
                    big = comp in ("k", "v", "q", "memory")
                    plateau = (13.0 if big else 0.8) * (1 - math.exp(-8 * frac))  # flat after the first ckpts
                    r = dict(base, probe="selfmod", layer=layer, component=comp)
                    drift = plateau + (rng.normal(0, 0.02) if step else 0)
                    rows["selfmod"].append(dict(r, metric="drift_init", value=drift))
                    rows["selfmod"].append(dict(r, metric="norm", value=(20.0 if big else 2.0) + plateau / 4))
                    rows["selfmod"].append(dict(r, metric="rel_drift_meta_fast", value=1.0 + rng.normal(0, 0.01)))
                    for pos in range(model.chunk_size, model.context_len + 1, model.chunk_size):
                        # initialisation shift: the fast state jumps at the first chunk, then barely moves
                        value = 0.95 + 0.05 * pos / model.context_len + rng.normal(0, 0.005)
                        rows["selfmod"].append(dict(r, metric="rel_drift_meta_fast", position=pos, value=value))
        if gated:
            tau = model.surprise_threshold
            for layer in range(n_layers):
                mu, sigma = math.log(1.5 + 0.3 * layer) - 0.2 * frac, 0.9
                r = dict(base, probe="surprise", layer=layer)
                q = {name: _lognormal_quantile(p, mu, sigma) for name, p in
                     [("min", 1e-4), ("p10", 0.1), ("p50", 0.5), ("p90", 0.9), ("max", 1 - 1e-4)]}
                mean = math.exp(mu + sigma**2 / 2)
                std = mean * math.sqrt(math.exp(sigma**2) - 1)
                for name, value in {**q, "mean": mean, "std": std}.items():
                    rows["surprise"].append(dict(r, metric=name, value=value))
                off = model.surprise_mode == "off"
                if off or model.surprise_mode == "relative":  # relative: τ is a z-score; a typical share passes
                    gate = 1.0 if off else RELATIVE_PASS
                else:
                    gate = 1.0 - _NORMAL.cdf((math.log(tau) - mu) / sigma) if tau > 0 else 1.0
                rows["surprise"].append(dict(r, metric="gate_pass_rate", component="gate", threshold=tau, value=gate))
                for t in GATE_GRID:  # what the gate would pass at other thresholds
                    if t != tau:
                        rate = 1.0 - _NORMAL.cdf((math.log(t) - mu) / sigma)
                        rows["surprise"].append(dict(r, metric="gate_pass_rate", threshold=t, value=rate))
            ce_mu = run["final"] + 1.5 * (1 - frac)
            for name, value in {"ce_mean": ce_mu, "ce_std": 2.6, "ce_min": 0.02, "ce_p10": ce_mu - 3.3,
                                "ce_p50": ce_mu + 0.1, "ce_p90": ce_mu + 3.2, "ce_max": ce_mu + 9.0}.items():
                rows["surprise"].append(dict(base, probe="surprise", metric=name, value=value))
        if has_selfmod_probe or step == last:  # a Transformer: its losses as trained at the last step only
            for r in _intervene_rows(variant, model, has_cms, components, gated, frac, step == last, rng,
                                     run["final"], memory=has_selfmod_probe):
                rows["intervene"].append(dict(base, probe="intervene", **r))
        params = [f"blocks.{i}.{p}" for i in range(n_layers) for p in ("attn_or_memory.weight", "mlp.weight")]
        n_none = 1 if variant == "titans" else 0  # one detached parameter: the auditor should see it
        for j, param in enumerate(params if step > 0 else []):  # gradflow has no step-0 rows
            none = j < n_none
            rows["gradflow"].append(dict(base, probe="gradflow", metric="grad_norm", param=param,
                                         value=math.nan if none else 0.5 / (1 + frac) + 0.01 * j))
            rows["gradflow"].append(dict(base, probe="gradflow", metric="grad_is_none", param=param,
                                         value=float(none)))
            rows["gradflow"].append(dict(base, probe="gradflow", metric="grad_is_zero", param=param, value=0.0))
        for name, value in ({"n_params_total": len(params), "n_grad_none": n_none, "n_grad_zero": 0}.items()
                            if step > 0 else []):
            rows["gradflow"].append(dict(base, probe="gradflow", metric=name, value=float(value)))
    return rows


def intervene_delta(switch: str, variant: str, frac: float, positions: np.ndarray) -> np.ndarray:
    """The true Δ = loss(switch) − loss(none) at each position: the SR-Titans writes help more the later in the
    sequence (continual adaptation) and more as training goes on; the CMS writes a little, evenly."""
    ramp = positions / positions[-1]
    selfmod = 0.08 * frac * ramp if variant != "titans" else 0.05 * frac * ramp
    cms = np.full_like(ramp, 0.01 * frac)
    return {"selfmod_writes_off": selfmod, "memory_writes_off": 0.6 * selfmod, "cms_writes_off": cms,
            "all_writes_off": selfmod + cms, "gate_open": 0.0 * ramp, "gate_closed": selfmod}[switch]


# how hard each probe sequence is: shared by every run, as the probe set is (analysis.within_run pairs on it)
SEQUENCE_DIFFICULTY = np.random.default_rng(7).normal(0.0, 0.3, 64)


def _intervene_rows(variant, model, has_cms, components, gated, frac, final, rng, final_loss,
                    memory=True) -> list[dict]:
    """The intervene probe's rows, from per-position losses built with known Δs, written by the probe's own
    row builder (hopelab.interventions.intervention_rows): every switch on 16 sequences at the last step, the
    tracked ones on 8 before (the probe: 64 and 8). As trained, a sequence's loss is its shared difficulty plus
    the run's final loss, so two runs differ sequence by sequence by about their final losses' difference.
    memory False (a Transformer): the rows as trained only."""
    import torch

    from hopelab.interventions import intervention_rows

    switches = ["selfmod_writes_off"] if len(components) > 1 else []
    switches += ["memory_writes_off"] + (["cms_writes_off"] if has_cms else []) + ["all_writes_off"]
    switches += ["gate_open", "gate_closed"] if gated and model.surprise_mode != "off" else []
    if not final:
        switches = [s for s in switches if s in ("selfmod_writes_off", "all_writes_off")]
    if not memory:
        switches = []
    n, T = (16 if final else 8), model.context_len  # the probe: 64 and 8; fewer keep the tests fast
    positions = np.arange(T, dtype=float)
    profile = 0.5 * (np.log1p(positions) - np.log1p(positions).mean())  # mean 0 over positions
    none = (final_loss - profile[None] + SEQUENCE_DIFFICULTY[:n, None] + rng.normal(0, 0.01, (n, 1))
            + rng.normal(0, 0.3, (n, T)))
    losses = {"none": none}
    for s in switches:
        noise = rng.normal(0, 0.02, (n, 1)) + rng.normal(0, 0.05, (n, T))  # per sequence, per token
        losses[s] = none + intervene_delta(s, variant, frac, positions)[None] + noise
    return intervention_rows({k: torch.from_numpy(v) for k, v in losses.items()})


def _write_run(root: Path, study: str, scale: str, variant: str, tag: str, seed: int, steps: int, ckpt_every: int,
               final: float, overrides: dict, status: str, fail_step: int | None, rng: np.random.Generator,
               t0: float, refs: tuple[float, float] | None = None) -> dict:
    spec = RunSpec(variant=variant, scale=scale, seed=seed, study=study, steps=steps, out=str(root.parent),
                   model_overrides=dict(overrides), tag=tag)
    preset = get_scale(scale)
    model = dataclasses.replace(_model_config(variant, scale), **overrides)
    train = dataclasses.replace(preset.train, steps=steps, ckpt_every=ckpt_every, seed=seed)
    run_dir = spec.run_dir
    n_params = int(N_PARAMS[variant] * (1.6e6 if scale == "tiny" else 19.0e6))
    data = {"references": {"unigram": refs[0], "bigram": refs[1]}} if refs else {}
    write_json_atomic({"spec": dataclasses.asdict(spec), "model": to_dict(model), "train": to_dict(train),
                       "variant": variant, "scale": scale, "n_params": n_params, "data": data},
                      run_dir / "config.json")

    tokens_per_step = train.batch_size * model.context_len
    ident = {"run_id": spec.run_id, "study": study, "variant": variant, "scale": scale, "seed": seed}
    end = steps if status == "done" else (fail_step if fail_step is not None else steps // 2)
    init_loss = math.log(model.vocab_size)
    metrics = [dict(ident, step=0, tokens=0, metric="val_loss", value=init_loss + 0.02)]
    for step in range(1, end + 1):
        curve = final + (init_loss - final) * math.exp(-step / (0.18 * steps)) + 0.05 * (1 - step / steps)
        value = math.nan if (fail_step is not None and step >= fail_step) else curve + rng.normal(0, 0.08)
        metrics.append(dict(ident, step=step, tokens=step * tokens_per_step, metric="train_loss", value=value))
        if step % ckpt_every == 0 and not math.isnan(value):
            val = final if step == steps else curve + 0.03
            metrics.append(dict(ident, step=step, tokens=step * tokens_per_step, metric="val_loss", value=val))
            metrics.append(dict(ident, step=step, tokens=step * tokens_per_step, metric="tokens_per_s",
                                value=4000.0 + rng.normal(0, 50)))
    write_parquet_atomic(rows_to_table(metrics, METRICS_SCHEMA), run_dir / "metrics.parquet")

    ckpts = [0] + [s for s in range(ckpt_every, end + 1, ckpt_every) if fail_step is None or s < fail_step]
    run = dict(ident, tokens_per_step=tokens_per_step, final=final)
    for probe, rows in _probe_rows(run, model, ckpts, rng).items():
        by_step: dict[int, list[dict]] = {}
        for r in rows:
            kept = {k: v for k, v in r.items() if k not in ("tokens_per_step", "final")}
            by_step.setdefault(r["step"], []).append(kept)
        for step, step_rows in by_step.items():  # one file per probe and checkpoint, as the probes write them
            path = run_dir / "probes" / f"{probe}-step{step}.parquet"
            write_parquet_atomic(rows_to_table(step_rows, PROBE_SCHEMA), path)

    wall = 0.9 * end * (1.0 if scale == "tiny" else 4.0) * N_PARAMS[variant]
    manifest = {
        "run_id": spec.run_id, "status": status,
        "reason": "loss is NaN" if status == "failed" else ("" if status == "done" else None),
        "failed_step": fail_step if status == "failed" else None,
        "git_sha": "0123456789abcdef0123456789abcdef01234567",
        "versions": {"torch": "2.13.0", "lightning": "2.6.6", "hopelab": "0.1.0"},
        "hardware": {"platform": "Linux-synthetic", "machine": "x86_64", "processor": "synthetic", "cpu_count": 2,
                     "torch_threads": 2, "cuda_available": False, "gpus": [], "accelerator": "CPUAccelerator",
                     "num_devices": 1, "world_size": 1, "precision": "32-true", "strategy": "SingleDeviceStrategy"},
        "started": f"2026-01-01T00:{int(t0) // 60 % 60:02d}:00", "ended": None if status == "running" else
        f"2026-01-01T01:{int(t0 + wall) // 60 % 60:02d}:00",
        "wall_time_s": None if status == "running" else wall, "last_step": end,
        "final_val_loss": final if status == "done" else None,
    }
    write_json_atomic(manifest, run_dir / "manifest.json")
    return {"run_id": spec.run_id, "run_name": spec.run_name, "variant": variant, "tag": tag, "scale": scale,
            "seed": seed, "overrides": dict(overrides), "path": str(run_dir.relative_to(root)), "status": status,
            "final_val_loss": manifest["final_val_loss"], "wall_time_s": manifest["wall_time_s"],
            "reason": manifest["reason"]}


def build_synthetic_study(out: str | Path, *, study: str = "synth", scales: tuple[str, ...] = ("tiny", "small"),
                          seeds: tuple[int, ...] = (0, 1, 2), variants: list[str] | None = None,
                          sweep: tuple = (0.005, 0.05), steps: int = 150, ckpt_every: int = 50,
                          failed: tuple | None = FAILED, in_progress: bool = False, overrides: dict | None = None,
                          rng_seed: int = 0, references: dict | None = None, settings: tuple[str, ...] = ()) -> Path:
    """Write the study under `out` and return its root `<out>/<study>`.

    failed: (scale, variant, seed, step) of the run whose loss becomes NaN, or None.
    in_progress: also a running run (partial files, no final loss) and a pending one (in study.json only).
    overrides: model overrides of every run (a study-wide `--set`, e.g. {"dim": 32}).
    references: {scale: (unigram, bigram)} stored in every run's config.json; None: REFERENCES.
    settings: tags of hope runs at the first scale with the reference's gate (not part of the sweep), e.g.
    "levels1": their losses follow TRUE_DELTA["hope-<tag>"].
    """
    references = REFERENCES if references is None else references
    rng = np.random.default_rng(rng_seed)
    root = Path(out) / study
    variants = list(variants or VARIANTS)
    entries = []
    t0 = 0.0
    for si, scale in enumerate(scales):
        common = dict(overrides or {})
        cells = [(v, "", dict(common)) for v in variants]
        if si == 0:
            cells += [("hope", "relative", {**common, "surprise_mode": "relative", "surprise_threshold": 0.0})
                      if t == "relative" else
                      ("hope", f"tau{t:g}", {**common, "surprise_mode": "absolute", "surprise_threshold": t})
                      for t in sweep]
            cells += [("hope", tag, dict(common)) for tag in settings]
        for variant, tag, cell_overrides in cells:
            run_name = f"{variant}-{tag}" if tag else variant
            for seed in seeds:
                delta = TRUE_DELTA[run_name][min(si, 1)]
                final = BASE_LOSS.get(scale, 5.0) + delta + SEED_OFFSET[seed % len(SEED_OFFSET)] + rng.normal(0, 0.004)
                status, fail_step = "done", None
                if failed is not None and (scale, variant, seed) == tuple(failed[:3]) and not tag:
                    status, fail_step = "failed", int(failed[3])
                entries.append(_write_run(root, study, scale, variant, tag, seed, steps, ckpt_every, final,
                                          cell_overrides, status, fail_step, rng, t0, references.get(scale)))
                t0 += 97.0
    if in_progress:
        scale, seed = scales[-1], max(seeds) + 1
        entries.append(_write_run(root, study, scale, "transformer", "", seed, steps, ckpt_every,
                                  BASE_LOSS.get(scale, 5.0), {}, "running", None, rng, t0))
        entries.append({"run_id": f"{study}/{scale}/titans/seed{seed}", "run_name": "titans", "variant": "titans",
                        "tag": "", "scale": scale, "seed": seed, "overrides": {},
                        "path": f"{scale}/titans/seed{seed}", "status": "pending", "final_val_loss": None,
                        "wall_time_s": None, "reason": None})
    write_json_atomic({
        "study": study,
        "definition": {"variants": variants, "scales": list(scales), "seeds": list(seeds), "steps": steps,
                       "sweep": {"variant": "hope", "surprise_threshold": list(sweep), "scale": scales[0]}},
        "command": f"hopelab study {study} --scale {','.join(scales)} --seeds {len(seeds)} --steps {steps}",
        "updated": "2026-01-01T02:00:00",
        "runs": entries,
    }, root / "study.json")
    return root


if __name__ == "__main__":  # python tests/synthetic_study.py OUT: write one to look at
    import sys

    print(build_synthetic_study(sys.argv[1] if len(sys.argv) > 1 else "runs"))
