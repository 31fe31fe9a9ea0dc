"""Unit tests of the probe measurements (no Trainer): drift arithmetic, a model moved by a known amount,
gate/surprise consistency, grad flow counts, every variant probed without errors, a failing probe."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from hopelab.config import ModelConfig, TrainConfig
from hopelab.lit.module import LitLM, lm_loss
from hopelab.lit.probes import (
    THRESHOLD_GRID,
    CMSProbe,
    GradFlowProbe,
    ProbeContext,
    SelfModProbe,
    SurpriseProbe,
    gradflow_rows,
    make_probes,
    rel_drift_per_sample,
    summary_stats,
    tensors_distance,
    tensors_norm,
)
from hopelab.lit.trainer import Schedule
from hopelab.models import VARIANTS

CFG = ModelConfig(vocab_size=128, dim=16, n_layers=2, n_heads=2, context_len=32, chunk_size=8, cms_periods=(8, 16))




def make_ctx(tmp_path, B: int = 3, T: int = 32, seed: int = 0) -> ProbeContext:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, CFG.vocab_size, (B, T + 1), generator=g)
    return ProbeContext(
        run_id="t/tiny/x/seed0", study="t", variant="x", scale="tiny", seed=0, tokens_per_step=B * T,
        probe_dir=tmp_path / "probes", schedule=Schedule(5, 20), probe_x=x[:, :-1], probe_y=x[:, 1:],
    )


def make_module(variant: str, **over) -> LitLM:
    torch.manual_seed(0)
    return LitLM(variant, dataclasses.replace(CFG, **over), TrainConfig())


def collect(probe, module, step: int):
    return probe.collect(None, module, step)  # trainer=None: no precision context, plain fp32


def pick(rows, **where):
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


# ---------------------------------------------------------------------------------------------- pure math


def test_norm_and_distance_of_known_tensors():
    a = {"x": torch.tensor([3.0, 0.0]), "y": torch.tensor([[0.0, 4.0]])}
    b = {"x": torch.tensor([0.0, 0.0]), "y": torch.tensor([[0.0, 0.0]])}
    assert tensors_norm(a.values()) == pytest.approx(5.0)
    assert tensors_distance(a, b) == pytest.approx(5.0)
    assert tensors_distance(a, a) == 0.0


def test_rel_drift_per_sample_known_values():
    meta = {"W": torch.ones(2, 2)}  # ‖meta‖ = 2
    fast = {"W": torch.stack([torch.ones(2, 2), torch.ones(2, 2) * 2, torch.zeros(2, 2)])}  # [3, 2, 2]
    drift = rel_drift_per_sample(fast, meta)
    assert drift.tolist() == pytest.approx([0.0, 1.0, 1.0])


def test_summary_stats_quantiles():
    stats = summary_stats(torch.arange(101, dtype=torch.float32))
    assert stats["min"] == 0 and stats["max"] == 100
    assert stats["p10"] == pytest.approx(10) and stats["p50"] == pytest.approx(50) and stats["p90"] == pytest.approx(90)
    assert stats["mean"] == pytest.approx(50)


def test_threshold_grid_covers_the_study_sweep():
    assert min(THRESHOLD_GRID) == 0.001 and max(THRESHOLD_GRID) == 100
    for t in (0.005, 0.01, 0.02, 0.05, 0.1):
        assert t in THRESHOLD_GRID


# --------------------------------------------------------------------------- a model moved by a known amount


def test_cms_drift_of_a_known_parameter_move(tmp_path):
    module = make_module("hope")
    probe = CMSProbe(make_ctx(tmp_path))
    probe.remember_init(module)
    probe.start(module)
    level = module.model.blocks[1].cms.levels[0]
    c = 0.01
    with torch.no_grad():
        level.init_up.add_(c)  # every entry moves by c: ‖Δ‖ = c·sqrt(numel)
    expected = c * math.sqrt(level.init_up.numel())
    rows = collect(probe, module, 5)
    moved = {r["metric"]: r["value"] for r in pick(rows, layer=1, level=0) if r["metric"] != "rel_drift_meta_fast"}
    assert moved["drift_init"] == pytest.approx(expected, rel=1e-5)
    assert moved["drift_prev"] == pytest.approx(expected, rel=1e-5)
    level_norm = math.sqrt(sum(p.detach().pow(2).sum().item() for p in level.parameters()))
    assert moved["param_norm"] == pytest.approx(level_norm, rel=1e-5)
    for other in pick(rows, layer=0, metric="drift_init") + pick(rows, layer=1, level=1, metric="drift_init"):
        assert other["value"] == 0.0
    # a second move: drift_prev measures only the new move, drift_init both
    with torch.no_grad():
        level.init_up.add_(2 * c)
    rows = collect(probe, module, 10)
    second = {r["metric"]: r["value"] for r in pick(rows, layer=1, level=0)}
    assert second["drift_prev"] == pytest.approx(2 * expected, rel=1e-5)
    assert second["drift_init"] == pytest.approx(3 * expected, rel=1e-5)
    # one cos_sim per level pair and layer, a cosine
    cos = pick(rows, metric="cos_sim")
    assert sorted((r["layer"], r["level"], r["level_other"]) for r in cos) == [(0, 0, 1), (1, 0, 1)]
    assert all(-1.0 <= r["value"] <= 1.0 for r in cos)


def test_selfmod_drift_of_a_known_state_move(tmp_path):
    module = make_module("hope")
    probe = SelfModProbe(make_ctx(tmp_path))
    probe.remember_init(module)
    titans = module.model.blocks[0].titans
    m = titans.components.index("v")
    c = 0.02
    with torch.no_grad():
        titans.init_W2[m].add_(c)
    expected = c * math.sqrt(titans.init_W2[m].numel())
    rows = collect(probe, module, 5)
    drift = {(r["layer"], r["component"]): r["value"] for r in pick(rows, metric="drift_init")}
    assert set(drift) == {(layer, comp) for layer in (0, 1) for comp in ("k", "v", "q", "eta", "alpha", "memory")}
    assert drift[(0, "v")] == pytest.approx(expected, rel=1e-5)
    assert all(v == 0.0 for key, v in drift.items() if key != (0, "v"))
    norms = {(r["layer"], r["component"]): r["value"] for r in pick(rows, metric="norm")}
    st = module.model.initial_states()["blocks.0.titans.v"]
    assert norms[(0, "v")] == pytest.approx(tensors_norm(st.values()), rel=1e-6)
    # relative meta->fast drift: one row per chunk end (T=32, chunk 8) and one after the batch
    rel = pick(rows, metric="rel_drift_meta_fast", layer=0, component="memory")
    assert sorted(r["position"] for r in rel if r["position"] is not None) == [8, 16, 24, 32]
    final = pick(rel, position=None)[0]["value"]
    assert final == pick(rel, position=32)[0]["value"] and final > 0


def test_rel_drift_matches_the_trace(tmp_path):
    """The probe's relative drift equals one computed by hand from trace_fast_states."""
    from hopelab.models import trace_fast_states

    module = make_module("hope")
    ctx = make_ctx(tmp_path)
    probe = SelfModProbe(ctx)
    probe.remember_init(module)
    rows = collect(probe, module, 5)
    model = module.model.eval()
    with torch.no_grad(), trace_fast_states(model) as trace:
        model(ctx.probe_x)
    rec = [r for r in trace.records if r.key == "blocks.1.titans.k" and r.position == 16][0]
    meta = model.initial_states()["blocks.1.titans.k"]
    by_hand = []
    for b in range(ctx.probe_x.shape[0]):
        num = math.sqrt(sum((rec.states[n][b] - meta[n]).pow(2).sum().item() for n in meta))
        den = math.sqrt(sum(meta[n].pow(2).sum().item() for n in meta))
        by_hand.append(num / den)
    got = pick(rows, metric="rel_drift_meta_fast", layer=1, component="k", position=16)[0]["value"]
    assert got == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-5)


# ------------------------------------------------------------------------------------------------ surprise


@pytest.mark.parametrize("variant", ["hope", "hope_no_surprise"])
def test_surprise_units_match_the_gate(tmp_path, variant):
    """In absolute mode the model's own gate passes exactly the tokens whose recorded surprise exceeds the
    configured threshold, so the probe's surprise is in the gate's units; with the gate off it passes all."""
    module = make_module(variant, surprise_threshold=0.05)
    ctx = make_ctx(tmp_path)
    rows = collect(SurpriseProbe(ctx), module, 5)
    for layer in (0, 1):
        actual = pick(rows, metric="gate_pass_rate", layer=layer, component="gate")
        assert len(actual) == 1 and actual[0]["threshold"] == 0.05
        fwd = ctx.forward(None, module, 5)
        s = fwd.hooks[f"blocks.{layer}.titans.hook_surprise"]
        if variant == "hope":
            assert actual[0]["value"] == pytest.approx(float((s > 0.05).float().mean()))
        else:
            assert actual[0]["value"] == 1.0
        grid = sorted((r["threshold"], r["value"]) for r in pick(rows, metric="gate_pass_rate", layer=layer)
                      if r.get("component") is None)
        assert [t for t, _ in grid] == [t for t in THRESHOLD_GRID if t != 0.05]
        assert all(a[1] >= b[1] for a, b in zip(grid, grid[1:]))  # pass rate falls as the threshold rises
        quant = {r["metric"]: r["value"] for r in pick(rows, layer=layer) if r["metric"] in ("min", "p50", "max")}
        assert quant["min"] <= quant["p50"] <= quant["max"]
    # the LM cross-entropy is reported apart (layer null) and equals the loss of the probe batch
    ce = {r["metric"]: r["value"] for r in rows if r["metric"].startswith("ce_")}
    assert set(ce) == {f"ce_{k}" for k in ("mean", "std", "min", "p10", "p50", "p90", "max")}
    with torch.no_grad():
        loss = lm_loss(module.model.eval()(ctx.probe_x), ctx.probe_y).item()
    assert ce["ce_mean"] == pytest.approx(loss, rel=1e-5)
    assert all(r.get("layer") is None for r in rows if r["metric"].startswith("ce_"))


# ------------------------------------------------------------------------------------------------ gradflow


def test_gradflow_counts_none_and_zero_grads():
    model = torch.nn.Module()
    model.used = torch.nn.Parameter(torch.ones(3))
    model.zero = torch.nn.Parameter(torch.ones(2))
    model.unused = torch.nn.Parameter(torch.ones(2))
    (model.used * torch.tensor([1.0, 2.0, 2.0])).sum().add(model.zero.sum() * 0).backward()
    rows = gradflow_rows(model)
    by = {(r.get("param"), r["metric"]): r["value"] for r in rows}
    assert by[("used", "grad_norm")] == pytest.approx(3.0)
    assert by[("zero", "grad_is_zero")] == 1.0 and by[("zero", "grad_norm")] == 0.0
    assert by[("unused", "grad_is_none")] == 1.0 and by[("unused", "grad_norm")] is None
    assert by[(None, "n_params_total")] == 3 and by[(None, "n_grad_none")] == 1 and by[(None, "n_grad_zero")] == 1


# --------------------------------------------------------------------------------------- every variant


EXPECTED = {  # which probes have rows for which variant (no mechanism: no rows, never an error)
    "hope": {"cms", "selfmod", "surprise"},
    "hope_no_cms": {"selfmod", "surprise"},
    "hope_no_selfmod": {"cms", "selfmod", "surprise"},  # selfmod: the memory component only
    "hope_no_surprise": {"cms", "selfmod", "surprise"},
    "titans": {"selfmod", "surprise"},  # surprise: the LM cross-entropy rows only
    "transformer": {"surprise"},
    "transformer_matched": {"surprise"},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_probes_on_every_variant(tmp_path, variant):
    module = make_module(variant)
    ctx = make_ctx(tmp_path)
    probes = make_probes(ctx)
    for p in probes:
        p.remember_init(module)
        p.start(module)
    # one training step's gradients for gradflow
    loss = lm_loss(module.model(ctx.probe_x), ctx.probe_y)
    loss.backward()
    grad = [p for p in probes if isinstance(p, GradFlowProbe)][0]
    grad.pending = (5, gradflow_rows(module.model))
    with_rows = set()
    for p in probes:
        rows = collect(p, module, 5)
        if rows:
            with_rows.add(p.name)
            ctx.write(p.name, 5, rows)  # rows must fit PROBE_SCHEMA
    assert ctx.errors == []
    assert with_rows == EXPECTED[variant] | {"gradflow"}
    if variant == "hope_no_selfmod":
        probe = SelfModProbe(ctx)
        probe.remember_init(module)
        assert {r["component"] for r in collect(probe, module, 5)} == {"memory"}
    assert (tmp_path / "probes" / "gradflow-step000005.parquet").exists()


def test_a_failing_probe_warns_and_the_run_goes_on(tmp_path, caplog):
    module = make_module("hope")
    ctx = make_ctx(tmp_path)
    probe = SurpriseProbe(ctx)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    ctx._forward = broken

    class FakeTrainer:
        is_global_zero = True

    probe.run(FakeTrainer(), module, 5)  # no exception
    assert len(ctx.errors) == 1 and "boom" in ctx.errors[0] and "surprise" in ctx.errors[0]
    assert not (tmp_path / "probes").exists()
