"""Unit tests of the probes (no Trainer): drift arithmetic, a model moved by a known amount, gate/surprise
consistency, grad flow counts, memory sites of every variant, every variant probed without errors, probe rows
unchanged by renamed modules, probe state through a checkpoint, order independence, a failing probe."""

from __future__ import annotations

import dataclasses
import io
import math

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from hopelab.config import ModelConfig, TrainConfig
from hopelab.layers.hooks import hook_names
from hopelab.lit.module import LitLM, lm_loss
from hopelab.lit.trainer import Schedule
from hopelab.models import VARIANTS, build_model
from hopelab.models.sites import MemorySite, memory_sites
from hopelab.probes import PROBES, CMSProbe, ProbeCallback, RunLabels, make_probes
from hopelab.probes import forward as probe_forward
from hopelab.probes.forward import SITE_HOOKS, ProbeStep
from hopelab.probes.gradflow import gradflow_rows
from hopelab.probes.measure import rel_drift_per_sample, tensors_distance, tensors_norm
from hopelab.probes.selfmod import SelfModProbe
from hopelab.probes.surprise import THRESHOLD_GRID, SurpriseProbe, summary_stats

CFG = ModelConfig(vocab_size=128, dim=16, n_layers=2, n_heads=2, context_len=32, chunk_size=8, cms_periods=(8, 16))
LABELS = RunLabels(run_id="t/tiny/x/seed0", study="t", variant="x", scale="tiny", seed=0, tokens_per_step=3 * 32)


def make_batch(B: int = 3, T: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, CFG.vocab_size, (B, T + 1), generator=g)
    return x[:, :-1], x[:, 1:]


BATCH = make_batch()


def make_callback(tmp_path, names=tuple(PROBES)) -> ProbeCallback:
    return make_probes(tmp_path / "probes", Schedule(5, 20), BATCH, LABELS, names)


def make_module(variant: str, **over) -> LitLM:
    torch.manual_seed(0)
    return LitLM(variant, dataclasses.replace(CFG, **over), TrainConfig())


def collect(probe, model: nn.Module, step: int):
    return probe.collect(ProbeStep(model, step, BATCH))  # trainer=None: no precision context, plain fp32


def site(model: nn.Module, kind: str, layer: int, level: int | None = None) -> MemorySite:
    return next(s for s in memory_sites(model) if (s.kind, s.layer, s.level) == (kind, layer, level))


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


# ------------------------------------------------------------------------------------------- memory sites


SELFMOD = ("k", "v", "eta", "alpha", "q", "memory")
SITES = {  # variant -> (kind, level, components) of each block's sites
    "hope": [("selfmod", None, SELFMOD), ("cms", 0, ()), ("cms", 1, ())],
    "hope_no_cms": [("selfmod", None, SELFMOD)],
    "hope_no_selfmod": [("selfmod", None, ("memory",)), ("cms", 0, ()), ("cms", 1, ())],
    "hope_no_surprise": [("selfmod", None, SELFMOD), ("cms", 0, ()), ("cms", 1, ())],
    "hope_attention": [("cms", 0, ()), ("cms", 1, ())],  # attention is no memory site
    "titans": [("titans", None, ("memory",))],
    "transformer": [],
    "transformer_matched": [],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_memory_sites_of_every_variant(variant):
    """Sites come block by block; their names are the prefixes of the initial-state keys and of every hook
    point the probe forward reads (a missing one would raise, never pass silently)."""
    model = build_model(variant, CFG)
    sites = memory_sites(model)
    assert [(s.layer, s.kind, s.level, s.components) for s in sites] == [
        (layer, *spec) for layer in range(CFG.n_layers) for spec in SITES[variant]
    ]
    modules = dict(model.named_modules())
    assert all(modules[s.name] is s.module for s in sites)
    if sites:
        assert model.memory_sites() == sites
        keys = {f"{s.name}.{c}" for s in sites for c in s.components} | {s.name for s in sites if s.kind == "cms"}
        assert keys == set(model.initial_states())
    names = set(hook_names(model))
    assert {f"{s.name}.{p}" for s in sites for p in SITE_HOOKS.get(s.kind, ())} <= names


# --------------------------------------------------------------------------- a model moved by a known amount


def test_cms_drift_of_a_known_parameter_move():
    model = make_module("hope").model
    probe = CMSProbe()
    probe.remember(model)
    level = site(model, "cms", 1, 0).module
    c = 0.01
    with torch.no_grad():
        level.init_up.add_(c)  # every entry moves by c: ‖Δ‖ = c·sqrt(numel)
    expected = c * math.sqrt(level.init_up.numel())
    rows = collect(probe, model, 5)
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
    rows = collect(probe, model, 10)
    second = {r["metric"]: r["value"] for r in pick(rows, layer=1, level=0)}
    assert second["drift_prev"] == pytest.approx(2 * expected, rel=1e-5)
    assert second["drift_init"] == pytest.approx(3 * expected, rel=1e-5)
    # one cos_sim per level pair and layer, a cosine
    cos = pick(rows, metric="cos_sim")
    assert sorted((r["layer"], r["level"], r["level_other"]) for r in cos) == [(0, 0, 1), (1, 0, 1)]
    assert all(-1.0 <= r["value"] <= 1.0 for r in cos)


def test_selfmod_drift_of_a_known_state_move():
    model = make_module("hope").model
    probe = SelfModProbe()
    probe.remember(model)
    titans = site(model, "selfmod", 0)
    m = titans.components.index("v")
    c = 0.02
    with torch.no_grad():
        titans.module.init_W2[m].add_(c)
    expected = c * math.sqrt(titans.module.init_W2[m].numel())
    rows = collect(probe, model, 5)
    drift = {(r["layer"], r["component"]): r["value"] for r in pick(rows, metric="drift_init")}
    assert set(drift) == {(layer, comp) for layer in (0, 1) for comp in ("k", "v", "q", "eta", "alpha", "memory")}
    assert drift[(0, "v")] == pytest.approx(expected, rel=1e-5)
    assert all(v == 0.0 for key, v in drift.items() if key != (0, "v"))
    norms = {(r["layer"], r["component"]): r["value"] for r in pick(rows, metric="norm")}
    st = model.initial_states()[f"{titans.name}.v"]
    assert norms[(0, "v")] == pytest.approx(tensors_norm(st.values()), rel=1e-6)
    # relative meta->fast drift: one row per chunk end (T=32, chunk 8) and one after the batch
    rel = pick(rows, metric="rel_drift_meta_fast", layer=0, component="memory")
    assert sorted(r["position"] for r in rel if r["position"] is not None) == [8, 16, 24, 32]
    final = pick(rel, position=None)[0]["value"]
    assert final == pick(rel, position=32)[0]["value"] and final > 0


def test_rel_drift_matches_the_trace():
    """The probe's relative drift equals one computed by hand from trace_fast_states."""
    from hopelab.models import trace_fast_states

    model = make_module("hope").model
    probe = SelfModProbe()
    probe.remember(model)
    rows = collect(probe, model, 5)
    key = f"{site(model, 'selfmod', 1).name}.k"
    model.eval()
    with torch.no_grad(), trace_fast_states(model) as trace:
        model(BATCH[0])
    rec = [r for r in trace.records if r.key == key and r.position == 16][0]
    meta = model.initial_states()[key]
    by_hand = []
    for b in range(BATCH[0].shape[0]):
        num = math.sqrt(sum((rec.states[n][b] - meta[n]).pow(2).sum().item() for n in meta))
        den = math.sqrt(sum(meta[n].pow(2).sum().item() for n in meta))
        by_hand.append(num / den)
    got = pick(rows, metric="rel_drift_meta_fast", layer=1, component="k", position=16)[0]["value"]
    assert got == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-5)


# ------------------------------------------------------------------------------------------------ surprise


@pytest.mark.parametrize("variant", ["hope", "hope_no_surprise"])
def test_surprise_units_match_the_gate(variant):
    """In absolute mode the model's own gate passes exactly the tokens whose recorded surprise exceeds the
    configured threshold, so the probe's surprise is in the gate's units; with the gate off it passes all."""
    model = make_module(variant, surprise_mode="absolute", surprise_threshold=0.05).model
    at = ProbeStep(model, 5, BATCH)
    rows = SurpriseProbe().collect(at)
    for layer in (0, 1):
        actual = pick(rows, metric="gate_pass_rate", layer=layer, component="gate")
        assert len(actual) == 1 and actual[0]["threshold"] == 0.05
        s = at.forward().hooks[f"{site(model, 'selfmod', layer).name}.hook_surprise"]
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
        loss = lm_loss(model.eval()(BATCH[0]), BATCH[1]).item()
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
    "hope": {"cms", "selfmod", "surprise", "intervene"},
    "hope_no_cms": {"selfmod", "surprise", "intervene"},
    "hope_no_selfmod": {"cms", "selfmod", "surprise", "intervene"},  # selfmod: the memory component only
    "hope_no_surprise": {"cms", "selfmod", "surprise", "intervene"},
    "hope_attention": {"cms", "surprise", "intervene"},  # surprise: the LM cross-entropy rows only
    "titans": {"selfmod", "surprise", "intervene"},  # surprise: the LM cross-entropy rows only
    "transformer": {"surprise"},
    "transformer_matched": {"surprise"},
}


def probe_at_step5(callback: ProbeCallback, module: LitLM) -> None:
    """What a run does up to probe step 5: remember the built model, one backward, the probes."""
    callback.setup(None, module, "fit")
    lm_loss(module.model(BATCH[0]), BATCH[1]).backward()
    for probe in callback.probes:
        probe.before_optimizer_step(module.model, 5)
    callback.run(None, module, 5)


def read_rows(tmp_path, probe: str, step: int = 5) -> list[dict]:
    return pq.read_table(tmp_path / "probes" / f"{probe}-step{step:06d}.parquet").to_pylist()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_probes_on_every_variant(tmp_path, variant):
    module = make_module(variant)
    callback = make_callback(tmp_path)
    probe_at_step5(callback, module)
    assert callback.errors == []
    written = {p.name.split("-step")[0] for p in (tmp_path / "probes").glob("*.parquet")}
    assert written == EXPECTED[variant] | {"gradflow", "recall"}  # recall: every token of a corpus batch
    for probe in written:  # rows fit PROBE_SCHEMA, with the run's labels
        rows = read_rows(tmp_path, probe)
        assert rows and all(r["probe"] == probe and r["step"] == 5 and r["tokens"] == 5 * 96 for r in rows)
    if variant == "hope_no_selfmod":
        assert {r["component"] for r in read_rows(tmp_path, "selfmod")} == {"memory"}


def rename_children(module: nn.Module, prefix: str = "renamed_") -> None:
    """Register every child of `module` as `renamed_<name>`; attribute access by the old name still works, so
    the forward is unchanged while every module name below it changes."""
    children = list(module._modules.items())
    module._modules.clear()
    for name, child in children:
        module._modules[prefix + name] = child
    cls = type(module)

    def getattr_renamed(self, name):
        modules = self.__dict__["_modules"]
        return modules[prefix + name] if prefix + name in modules else cls.__getattr__(self, name)

    module.__class__ = type(f"Renamed{cls.__name__}", (cls,), {"__getattr__": getattr_renamed})


@pytest.mark.parametrize("variant", ["hope", "titans"])
def test_probe_rows_do_not_depend_on_module_names(tmp_path, variant):
    """Renaming the attributes that hold the memories (in the blocks, in the CMS) renames the sites and
    leaves every probe row as it was (gradflow's parameter names aside)."""
    module = make_module(variant)
    before = make_callback(tmp_path / "before")
    probe_at_step5(before, module)
    names_before = [s.name for s in memory_sites(module.model)]

    holders = {id(s.module) for s in memory_sites(module.model)}
    for block in module.model.blocks:
        for mod in list(block.modules()):
            holds = any(id(m) in holders for m in mod.modules() if m is not mod)
            if holds and id(mod) not in holders and not isinstance(mod, nn.ModuleList):
                rename_children(mod)
    names_after = [s.name for s in memory_sites(module.model)]
    assert len(names_after) == len(names_before) and not set(names_after) & set(names_before)

    module.zero_grad()
    after = make_callback(tmp_path / "after")
    probe_at_step5(after, module)
    assert before.errors == after.errors == []
    for probe in EXPECTED[variant] | {"gradflow"}:
        rows = {"before": read_rows(tmp_path / "before", probe), "after": read_rows(tmp_path / "after", probe)}
        if probe == "gradflow":
            rows = {k: [{**r, "param": None} for r in v] for k, v in rows.items()}
        assert rows["after"] == rows["before"] and rows["before"]


def test_probe_state_survives_a_checkpoint(tmp_path):
    """A resumed run measures drift_init from step 0's weights, restored from the callback's state_dict
    (saved and loaded as a Lightning checkpoint holds it), not from the weights it was rebuilt with."""
    module = make_module("hope")
    model = module.model
    first = make_callback(tmp_path, names=("cms", "selfmod"))
    first.setup(None, module, "fit")
    with torch.no_grad():
        for s in memory_sites(model):
            for p in s.module.parameters():
                p.add_(0.01)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = make_callback(tmp_path, names=("cms", "selfmod"))
    resumed.setup(None, module, "fit")  # sees the moved weights: what a rebuilt model would hold if it differed
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in zip(first.probes, resumed.probes):
        assert collect(b, model, 10) == collect(a, model, 10)
    drift = [r["value"] for r in collect(resumed.probes[1], model, 10) if r["metric"] == "drift_init"]
    assert drift and all(v > 0 for v in drift)


def test_probes_do_not_depend_on_their_order(tmp_path):
    """Every probe reads the same shared forward and its own state: reversing the order changes no row."""
    files = {}
    for order in (tuple(PROBES), tuple(reversed(PROBES))):
        out = tmp_path / "-".join(order)
        probe_at_step5(make_callback(out, names=order), make_module("hope"))
        files[order] = {p.name: pq.read_table(p).to_pylist() for p in (out / "probes").glob("*.parquet")}
    first, second = files.values()
    assert first == second and len(first) == len(PROBES)


def test_a_failing_probe_warns_and_the_run_goes_on(tmp_path, monkeypatch):
    module = make_module("hope")
    callback = make_callback(tmp_path, names=("surprise",))

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(probe_forward, "run_probe_forward", broken)
    callback.run(None, module, 5)  # no exception
    assert len(callback.errors) == 1 and "boom" in callback.errors[0] and "surprise" in callback.errors[0]
    assert not (tmp_path / "probes").exists()
