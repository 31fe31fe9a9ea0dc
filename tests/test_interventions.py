"""Intervention switches (hopelab.interventions): each stops exactly what it names, in the layers' own code."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from hopelab.config import ModelConfig
from hopelab.errors import UserError
from hopelab.interventions import applicable_switches, intervention, switched
from hopelab.layers.fast_memory import Intervention, with_intervention
from hopelab.models import Execution, build_model, trace_fast_states

DT = torch.float64
V = 50
CFG = ModelConfig(vocab_size=V, dim=16, n_layers=2, n_heads=2, context_len=32, chunk_size=4, cms_periods=(4, 8))
MIXER = ("k", "v", "eta", "alpha", "q", "memory")


def make(variant="hope", execution=Execution(), **overrides):
    torch.manual_seed(0)
    return build_model(variant, dataclasses.replace(CFG, **overrides), execution).to(DT)


def tokens(B=2, T=32, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def traced(model, x, switch="none"):
    """logits and every fast state the forward reached, by memory key: [(position, {name: [B, ...]})]."""
    with torch.no_grad(), switched(model, switch), trace_fast_states(model) as trace:
        logits = model(x)
    states = {}
    for r in trace.records:
        states.setdefault(r.key, []).append((r.position, r.states))
    return logits, states


def moved(model, states) -> dict[str, bool]:
    """memory key -> whether any state it reached differs from its meta-learned initial state."""
    init = model.initial_states()
    return {key: any(not torch.equal(s[n], init[key][n].expand_as(s[n])) for _, s in recs for n in s)
            for key, recs in states.items()}


# which memories of block b keep their initial state under each switch (hope: SR-Titans + 2 CMS levels)
FROZEN = {
    "none": set(),
    "selfmod_writes_off": {f"mixer.{c}" for c in MIXER},
    "memory_writes_off": {"mixer.memory"},
    "cms_writes_off": {"cms.levels.0", "cms.levels.1"},
    "all_writes_off": {f"mixer.{c}" for c in MIXER} | {"cms.levels.0", "cms.levels.1"},
    "gate_open": set(),
    "gate_closed": {f"mixer.{c}" for c in MIXER},
}


@pytest.mark.parametrize("switch", list(FROZEN))
def test_each_switch_freezes_exactly_the_memories_it_names(switch):
    model, x = make().eval(), tokens()
    logits, states = traced(model, x, switch)
    frozen = {f"blocks.{b}.{m}" for b in range(CFG.n_layers) for m in FROZEN[switch]}
    assert set(states) == set(model.initial_states())  # every memory reported its states
    for key, has_moved in moved(model, states).items():
        assert has_moved == (key not in frozen), key
    if switch != "none":  # and the model computes something else than as trained
        assert not torch.equal(logits, traced(model, x)[0])


def test_a_switch_changes_nothing_upstream_of_what_it_freezes():
    """The CMS comes after the mixer of its block: freezing it leaves block 0's mixer bit for bit as trained.
    Without a gate (so M_memory's surprise decides nothing), freezing M_memory leaves the other five
    memories of block 0 bit for bit as trained: the stacked memories are independent row blocks."""
    model, x = make().eval(), tokens()
    _, base = traced(model, x)
    _, cms_off = traced(model, x, "cms_writes_off")
    for c in MIXER:
        for (_, a), (_, b) in zip(base[f"blocks.0.mixer.{c}"], cms_off[f"blocks.0.mixer.{c}"], strict=True):
            assert all(torch.equal(a[n], b[n]) for n in a), c
    model = make("hope_no_surprise").eval()
    _, base = traced(model, x)
    _, mem_off = traced(model, x, "memory_writes_off")
    for c in MIXER[:-1]:
        for (_, a), (_, b) in zip(base[f"blocks.0.mixer.{c}"], mem_off[f"blocks.0.mixer.{c}"], strict=True):
            assert all(torch.equal(a[n], b[n]) for n in a), c


@pytest.mark.parametrize("variant", ["hope", "hope_no_selfmod", "titans"])
def test_all_writes_off_leaves_only_the_conv_window_of_context(variant):
    """With every write off, a token's logits depend on the last conv_window tokens per layer only: no
    in-context memory is left, not even the writes earlier in the same chunk. As trained, they reach them."""
    model, x = make(variant, n_layers=1, chunk_size=8).eval(), tokens()
    x2 = x.clone()
    x2[:, :2] = (x2[:, :2] + 1) % V  # tokens 0, 1 reach token 5 (in their chunk) through the memories alone
    start = 2 + CFG.conv_window - 1
    for switch, far in (("none", True), ("all_writes_off", False)):
        with torch.no_grad(), switched(model, switch):
            diff = (model(x)[:, start:] - model(x2)[:, start:]).abs()  # [B, T, V]
        assert (diff.max() > 1e-9) == far, (switch, diff.max())
        assert (diff[:, :8 - start].max() > 1e-9) == far  # within the first chunk too


@pytest.mark.parametrize("variant", ["hope", "titans"])
@pytest.mark.parametrize("every", [4, 8, 16])
def test_reset_every_r_forgets_everything_before_the_last_reset(variant, every):
    """After a reset at token R the fast weights are the initial ones again: tokens from R + (conv reach) on do
    not see tokens before R. R = 4 is half the slower CMS level's period: that level then never writes."""
    model, x = make(variant, n_layers=1).eval(), tokens()
    name = f"reset_every_{every}"
    assert name in applicable_switches(model)
    x2 = x.clone()
    reach = every - (CFG.conv_window - 1)  # tokens before this reach token R through the memories alone
    x2[:, :reach] = (x2[:, :reach] + 1) % V
    with torch.no_grad(), switched(model, name):
        diff = (model(x)[:, every:] - model(x2)[:, every:]).abs().max()
        assert diff == 0
    with torch.no_grad():
        assert (model(x)[:, every:] - model(x2)[:, every:]).abs().max() > 1e-9  # as trained, it does


@pytest.mark.parametrize("variant,intervention_", [
    ("transformer", Intervention(frozen=(*MIXER, "cms"), gate="closed", reset_every=4)),
    ("hope_no_cms", Intervention(frozen=("cms",))),
    ("hope_no_surprise", Intervention(gate="open")),
    ("titans", Intervention(frozen=("cms", "k", "q"), gate="closed")),
    ("hope_attention", Intervention(frozen=MIXER, gate="closed")),
])
def test_a_model_without_the_mechanism_is_unchanged_to_the_last_bit(variant, intervention_):
    model, x = make(variant).eval(), tokens()
    with torch.no_grad():
        base = model(x)
        with with_intervention(model, intervention_):
            assert torch.equal(model(x), base)


def test_which_switches_apply():
    hope = applicable_switches(make())
    assert hope == ["none", "selfmod_writes_off", "memory_writes_off", "cms_writes_off", "all_writes_off",
                    "gate_open", "gate_closed", "reset_every_4", "reset_every_8", "reset_every_16"]
    assert applicable_switches(make("titans")) == ["none", "memory_writes_off", "all_writes_off", "reset_every_4",
                                                   "reset_every_8", "reset_every_16"]
    assert applicable_switches(make("transformer")) == ["none"]
    assert applicable_switches(make("hope_attention")) == ["none", "cms_writes_off"]
    assert "selfmod_writes_off" not in applicable_switches(make("hope_no_selfmod"))
    assert "gate_open" not in applicable_switches(make("hope_no_surprise"))
    assert "cms_writes_off" not in applicable_switches(make("hope_no_cms"))
    assert "reset_every_12" not in applicable_switches(make())  # falls inside the CMS levels' 32-token steps
    with pytest.raises(UserError, match="unknown switch"):
        intervention("cms_off")
    with pytest.raises(UserError, match="does not apply"), switched(make("transformer"), "all_writes_off"):
        pass


def test_switch_is_put_back_and_a_build_time_switch_equals_a_set_one():
    model, x = make().eval(), tokens()
    with torch.no_grad():
        base = model(x)
        with switched(model, "all_writes_off"):
            off = model(x)
        assert torch.equal(model(x), base)  # the switch is gone after the block
        built = make(execution=Execution(intervention=intervention("all_writes_off"))).eval()
        built.load_state_dict(model.state_dict())
        assert torch.equal(built(x), off)


def test_cms_writes_off_reaches_hope_attentions_cms_only():
    """hope_attention's CMS levels are its only memories: cms_writes_off changes its output, and gives the same
    numbers as the CMS frozen with the (absent) SR-Titans memories."""
    model, x = make("hope_attention").eval(), tokens()
    with torch.no_grad():
        base = model(x)
        with switched(model, "cms_writes_off"):
            off = model(x)
        with with_intervention(model, Intervention(frozen=(*MIXER, "cms"))):
            assert torch.equal(model(x), off)
    assert not torch.allclose(off, base)


@pytest.mark.parametrize("switch", ["memory_writes_off", "cms_writes_off", "reset_every_8"])
def test_switches_under_recompute_give_the_same_numbers_and_gradients(switch):
    model, x = make(), tokens()
    other = make(execution=Execution(recompute=True))
    results = []
    for m in (model, other):
        with switched(m, switch):
            loss = m(x).logsumexp(-1).mean()
            grads = torch.autograd.grad(loss, [p for p in m.parameters()], allow_unused=True)
        results.append((loss, grads))
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_a_switch_under_compile_gives_the_eager_numbers():
    """Compiled steps (while gradients are recorded) read the switch as the eager ones do."""
    cfg = dict(dim=16, n_layers=1, chunk_size=4, cms_periods=(16,), context_len=64)
    eager, x = make(**cfg).float(), tokens(T=64)
    compiled = make(execution=Execution(compile=True), **cfg).float()
    compiled.load_state_dict(eager.state_dict())
    with switched(eager, "all_writes_off"):
        want = eager(x)
    with switched(compiled, "all_writes_off"):
        got = compiled(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(eager(x), want, rtol=1e-4, atol=1e-5)  # the switch did something


# --------------------------------------------------------------------------------------- statistics and rows


def test_bootstrap_interval_agrees_with_scipy():
    """Percentile bootstrap of the mean over sequences, against scipy.stats.bootstrap on the same data: both
    are Monte-Carlo, so they agree to a few percent of the interval's width."""
    from scipy.stats import bootstrap

    from hopelab.interventions import bootstrap_ci

    rng = np.random.default_rng(3)
    for data in (rng.normal(0.05, 0.2, size=64), rng.exponential(0.1, size=100) - 0.02):
        ours = bootstrap_ci(data, n_resamples=20000)
        ref = bootstrap(
            (data,), np.mean, confidence_level=0.95, n_resamples=20000, method="percentile",
            rng=np.random.default_rng(0),
        ).confidence_interval
        width = ref.high - ref.low
        assert ours.mean == pytest.approx(data.mean())
        assert abs(ours.lo - ref.low) < 0.03 * width and abs(ours.hi - ref.high) < 0.03 * width
        assert ours.n == len(data)


def test_bootstrap_over_seeds_is_wider_when_seeds_disagree():
    from hopelab.interventions import bootstrap_ci

    rng = np.random.default_rng(0)
    same = [rng.normal(0.1, 0.05, 64) for _ in range(3)]
    apart = [rng.normal(m, 0.05, 64) for m in (0.0, 0.1, 0.2)]
    one, agree, disagree = bootstrap_ci(np.concatenate(same)), bootstrap_ci(same), bootstrap_ci(apart)
    assert agree.n == 192 and agree.mean == pytest.approx(np.mean([s.mean() for s in same]))
    assert agree.hi - agree.lo == pytest.approx(one.hi - one.lo, rel=0.3)  # no seed spread: as one pool
    assert disagree.hi - disagree.lo > 3 * (agree.hi - agree.lo)  # the spread across seeds counts
    assert np.isnan(bootstrap_ci(np.array([0.3])).lo)


def test_rows_give_the_same_effects_as_the_losses():
    """Δ and its interval computed from the written rows alone equal those from the per-position losses."""
    from hopelab.interventions import effects_from_rows, evaluate_switches, intervention_rows, switch_effects

    model, x = make().eval(), tokens(B=6)
    losses = evaluate_switches(model, (x, x.roll(-1, 1)), ["cms_writes_off", "all_writes_off", "gate_open"],
                               batch_size=4)
    assert list(losses) == ["none", "cms_writes_off", "all_writes_off", "gate_open"]
    assert losses["none"].shape == (6, 32)
    effects = {e.switch: e for e in switch_effects(losses, buckets=4)}
    table = effects_from_rows(pd.DataFrame(intervention_rows(losses, buckets=4)))
    for switch, e in effects.items():
        whole = table[(table["switch"] == switch) & table["bucket_start"].isna()].iloc[0]
        assert whole["delta"] == pytest.approx(e.delta.mean) and whole["delta_lo"] == pytest.approx(e.delta.lo)
        buckets = table[(table["switch"] == switch) & table["bucket_start"].notna()].sort_values("bucket_start")
        assert list(buckets["bucket_start"]) == [a for a, _, _ in e.buckets] == [0, 8, 16, 24]
        assert list(buckets["delta"]) == pytest.approx([iv.mean for _, _, iv in e.buckets])
    d = (losses["all_writes_off"] - losses["none"]).double().mean(1)  # [N] by hand
    assert effects["all_writes_off"].delta.mean == pytest.approx(float(d.mean()))
    assert effects["all_writes_off"].delta.mean != 0


def test_evaluate_switches_leaves_out_what_does_not_apply_and_restores_the_model():
    from hopelab.interventions import evaluate_switches

    model, x = make("titans"), tokens(B=2)
    losses = evaluate_switches(model, [(x, x), (x, x)], ["selfmod_writes_off", "memory_writes_off"])
    assert list(losses) == ["none", "memory_writes_off"] and losses["none"].shape == (4, 32)
    assert model.training  # put back in train mode
    assert list(evaluate_switches(make("transformer"), (x, x))) == ["none"]


# --------------------------------------------------------------------------------------- ground truth


@pytest.mark.slow
def test_ground_truth_hope_uses_its_memory_only_where_the_task_needs_it():
    """A random sequence of 16 tokens repeated twice: the second copy is predictable from the first alone, the
    first from nothing. After brief training, switching every write off raises hope's loss on the second copy
    (interval above 0) and leaves the first copy alone (interval across 0, and a small fraction of it)."""
    from hopelab.interventions import bootstrap_ci, evaluate_switches, seq_deltas

    torch.manual_seed(0)
    V, L = 16, 16
    # every token writes: the instrument is under test here, not the surprise gate (whose default filters)
    cfg = ModelConfig(vocab_size=V, dim=32, n_layers=1, n_heads=2, context_len=2 * L, chunk_size=4, cms_periods=(8,),
                      surprise_mode="off")
    model = build_model("hope", cfg)

    def copies(n, gen):  # x, y [n, 2L]: s s, and the next token of each
        s = torch.randint(0, V, (n, L), generator=gen)
        seq = torch.cat([s, s, s[:, :1]], dim=1)
        return seq[:, :-1], seq[:, 1:]

    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    for _ in range(200):
        x, y = copies(16, gen)
        torch.nn.functional.cross_entropy(model(x).transpose(1, 2), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    losses = evaluate_switches(model, copies(64, torch.Generator().manual_seed(99)), ["all_writes_off"])
    second = bootstrap_ci(seq_deltas(losses["all_writes_off"], losses["none"], L))  # predicting s_2 … s_L, s_1
    first = bootstrap_ci(seq_deltas(losses["all_writes_off"], losses["none"], 0, L - 1))  # s_2 … s_L of copy 1
    assert second.lo > 0, second
    assert first.lo < 0 < first.hi and abs(first.mean) < 0.2 * second.mean, (first, second)


def test_effects_from_rows_resamples_seeds_first():
    """Two seeds whose models disagree (Δ 0 and 0.2): the interval over seeds spans them, where pooling the
    sequences of both as one sample would not."""
    from hopelab.interventions import effects_from_rows, intervention_rows

    rng = np.random.default_rng(0)
    frames = []
    for seed, shift in ((0, 0.0), (1, 0.2)):
        none = torch.from_numpy(rng.normal(3.0, 0.1, (32, 16)))
        rows = intervention_rows({"none": none, "all_writes_off": none + shift + 0.01 * torch.randn(32, 1)})
        frames.append(pd.DataFrame(rows).assign(seed=seed))
    rows = pd.concat(frames)
    whole = effects_from_rows(rows).query("bucket_start.isna()").iloc[0]
    pooled = effects_from_rows(rows.drop(columns="seed")).query("bucket_start.isna()").iloc[0]
    assert whole["delta"] == pytest.approx(0.1, abs=0.01) and whole["n"] == 64
    assert whole["delta_lo"] < 0.02 and whole["delta_hi"] > 0.18  # the seeds' spread
    assert pooled["delta_hi"] - pooled["delta_lo"] < 0.1
