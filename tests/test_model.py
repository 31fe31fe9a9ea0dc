"""The HOPE model and its variants: faithful where public implementations are not (see seeds/001)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from hopelab.config import ModelConfig
from hopelab.errors import UserError
from hopelab.layers.cms import CMSLevel, CMSLevelState
from hopelab.layers.hooks import attach_hooks, hook_names, record_hooks
from hopelab.models import (
    VARIANTS,
    Execution,
    build_model,
    count_parameters,
    fast_memory_layers,
    trace_fast_states,
    variant_config,
)
from hopelab.ops.cms import cms_level_reference

DT = torch.float64
V = 50
CFG = ModelConfig(vocab_size=V, dim=16, n_layers=1, n_heads=2, context_len=32, chunk_size=4, cms_periods=(4, 8))


def make(variant, **overrides):
    torch.manual_seed(0)
    return build_model(variant, dataclasses.replace(CFG, **overrides)).to(DT)


def same_model(model, execution):
    """`model` again, built to run with `execution`."""
    other = build_model(model.variant, model.config, execution).to(DT)
    other.load_state_dict(model.state_dict())
    return other


def tokens(B=2, T=32, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def next_token_loss(logits, x, start=0):
    return F.cross_entropy(logits[:, start:-1].reshape(-1, V), x[:, start + 1 :].reshape(-1))


def param_grads(model, loss):
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return dict(zip(params, grads))


# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [1, 4])
@pytest.mark.parametrize(
    "variant,memory",
    [("hope", "mlp"), ("hope", "linear"), ("hope_no_selfmod", "mlp"), ("hope_no_selfmod", "linear"), ("titans", "mlp")],
)
def test_chunked_fast_path_equals_reference(variant, memory, chunk_size):
    x = tokens(T=16)
    model = make(variant, memory=memory, chunk_size=chunk_size, n_layers=1)
    fast = model(x)
    g_fast = param_grads(model, next_token_loss(fast, x))
    reference = same_model(model, Execution(impl="reference"))
    ref = reference(x)
    g_ref = param_grads(reference, next_token_loss(ref, x))
    assert torch.allclose(fast, ref, atol=1e-10, rtol=0)
    for name in g_fast:
        assert g_fast[name] is not None and g_ref[name] is not None, name
        assert torch.allclose(g_fast[name], g_ref[name], atol=1e-10, rtol=1e-8), name


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_causal_in_float64(variant):
    model = make(variant).eval()
    x = tokens(T=16)
    base = model(x)
    for j in (0, 2, 4, 7, 9, 15):  # chunk starts and positions inside chunks
        x2 = x.clone()
        x2[:, j] = (x2[:, j] + 7) % V
        out = model(x2)
        assert torch.equal(out[:, :j], base[:, :j]) or torch.allclose(out[:, :j], base[:, :j], atol=1e-13), j
        assert not torch.allclose(out[:, j:], base[:, j:])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_batch_independence(variant):
    model = make(variant)
    x = tokens(B=3, T=16)
    base = model(x)
    x2 = x.clone()
    x2[0] = (x2[0] + 3) % V
    out = model(x2)
    assert torch.allclose(out[1:], base[1:], atol=1e-13)
    assert not torch.allclose(out[0], base[0])


@pytest.mark.parametrize("variant", ["hope", "hope_no_cms", "hope_no_selfmod", "titans"])
def test_streaming_equals_parallel(variant):
    model = make(variant).eval()
    x = tokens(T=32)
    with torch.no_grad():
        full = model(x)
        a, state = model(x[:, :8], return_state=True)
        b, state = model(x[:, 8:24], state=state, return_state=True)
        c, _ = model(x[:, 24:], state=state, return_state=True)
    assert torch.allclose(torch.cat([a, b, c], 1), full, atol=1e-12)
    with pytest.raises(ValueError, match="multiple of"):
        _, bad = model(x[:, :6], return_state=True)
        model(x[:, 6:], state=bad)


def test_state_does_not_carry_across_calls():
    model = make("hope")
    x = tokens()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_parameter_gets_a_nonzero_gradient(variant):
    model = make(variant, n_layers=2)
    x = tokens()
    grads = param_grads(model, next_token_loss(model(x), x))
    dead = [n for n, g in grads.items() if g is None or not torch.any(g != 0)]
    assert not dead, dead


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_trains_under_bf16_autocast(variant):
    """`--precision bf16-mixed`: half-precision matmuls, and the DGD solve (which has no bf16 kernel) in
    float32. The loss stays near the float32 one and every parameter still gets a finite gradient."""
    torch.manual_seed(0)
    model = build_model(variant, CFG)
    x = tokens()
    loss32 = next_token_loss(model(x), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16 = next_token_loss(model(x), x)
    grads = param_grads(model, loss16)
    assert abs(loss16.item() - loss32.item()) < 0.05
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("inner_grad", ["full", "first_order"])
def test_late_loss_reaches_initial_states_and_rate_producers(inner_grad):
    """A loss on the last quarter of positions alone must reach all six memories' initial states (through the
    in-sequence updates), and the η and α producers."""
    model = make("hope", inner_grad=inner_grad, n_layers=2)
    x = tokens(T=32)
    grads = param_grads(model, next_token_loss(model(x), x, start=24))
    for i in range(2):
        for suffix in ("init_W1", "init_W2", "eta_readout", "eta_bias", "alpha_readout", "alpha_bias"):
            g = grads[f"blocks.{i}.mixer.{suffix}"]
            assert g is not None and torch.any(g != 0), suffix
        per_memory = grads[f"blocks.{i}.mixer.init_W2"].flatten(1).abs().sum(1)  # [6 memories] k v q η α mem
        if inner_grad == "full":
            assert torch.all(per_memory > 0), per_memory
        else:  # first order: M_v only makes targets, which first-order treats as data; it cannot learn
            assert per_memory[1] == 0 and torch.all(per_memory[[0, 2, 3, 4, 5]] > 0), per_memory
        for level in range(len(CFG.cms_periods)):
            assert torch.any(grads[f"blocks.{i}.cms.levels.{level}.init_up"] != 0)


def test_eta_alpha_vary_per_token_and_sample():
    model = make("hope")
    with record_hooks(model, ["*hook_eta", "*hook_alpha"]) as rec:
        model(tokens(B=3))
    assert len(rec) == 2 * CFG.n_layers
    for name, t in rec.items():  # [B, T, H]
        assert t.shape == (3, 32, CFG.n_heads)
        assert t.std(dim=1).min() > 0, name  # across tokens
        assert t.std(dim=0).min() > 0, name  # across samples
        assert torch.all(t > 0) and torch.all(t <= (1.0 if "alpha" in name else CFG.eta_max))


@pytest.mark.parametrize("variant", ["hope", "hope_no_selfmod", "titans"])
def test_memory_updates_in_eval_beyond_conv_window(variant):
    model = make(variant, use_cms=False).eval()  # no CMS: the memory alone must carry it
    x = tokens(T=32)
    with torch.no_grad():
        base = model(x)
        x2 = x.clone()
        x2[:, 0] = (x2[:, 0] + 1) % V
        late = (model(x2)[:, 24:] - base[:, 24:]).abs().max()
    assert late > 1e-8  # 24+ tokens away, far beyond the 4-token conv window


def test_cms_levels_update_at_token_periods():
    model = make("hope")
    with trace_fast_states(model) as trace:
        model(tokens(T=32))
    by_key = {}
    for r in trace.records:
        by_key.setdefault(r.key, []).append(r.position)
    assert by_key["blocks.0.cms.levels.0"] == [4, 8, 12, 16, 20, 24, 28, 32]
    assert by_key["blocks.0.cms.levels.1"] == [8, 16, 24, 32]
    assert by_key["blocks.0.mixer.memory"] == [4, 8, 12, 16, 20, 24, 28, 32]
    states = model.initial_states()
    assert set(states) == {f"blocks.0.mixer.{c}" for c in ("k", "v", "q", "eta", "alpha", "memory")} | {
        "blocks.0.cms.levels.0",
        "blocks.0.cms.levels.1",
    }
    rec = trace.records[-1]
    for name, t in rec.states.items():
        assert t.shape[1:] == states[rec.key][name].shape
    # every recorded CMS state is a new one: the level wrote at each of those positions (a zero rate would not)
    for key in ("blocks.0.cms.levels.0", "blocks.0.cms.levels.1"):
        seen = [states[key]] + [r.states for r in trace.records if r.key == key]
        for before, after in zip(seen, seen[1:]):
            for name in ("W_up", "W_down"):
                assert (after[name] - before[name]).abs().max() > 1e-8, (key, name)


def test_surprise_gate_hooks_and_threshold():
    x = tokens()
    with record_hooks(model := make("hope", surprise_threshold=1e9), ["*hook_gate", "*hook_surprise"]) as rec:
        model(x)
    assert all(torch.all(t == 0) for n, t in rec.items() if n.endswith("gate"))  # nothing clears 1e9
    with record_hooks(model := make("hope_no_surprise"), ["*hook_gate", "*hook_surprise"]) as rec:
        model(x)
    assert all(torch.all(t == 1) for n, t in rec.items() if n.endswith("gate"))
    assert all(torch.all(t > 0) for n, t in rec.items() if n.endswith("surprise"))


def test_gated_cms_and_hooks_are_removed():
    model = make("hope", cms_combine="gated", n_layers=2)
    names = hook_names(model)
    assert "blocks.1.cms.levels.1.hook_out" in names
    with attach_hooks(model, {"blocks.*.mixer.hook_out": lambda n, t: None}) as attached:
        assert len(attached) == 2
        model(tokens())
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(KeyError), attach_hooks(model, {"blocks.0.no_such_hook": lambda n, t: None}):
        pass


@pytest.mark.parametrize("config", ["tiny", "scaled", CFG])
def test_transformer_matched_within_5_percent(config):
    with torch.device("meta"):
        hope = count_parameters(build_model("hope", config))
        matched = count_parameters(build_model("transformer_matched", config))
    assert abs(matched - hope) / hope < 0.05
    assert variant_config("transformer_matched", config).dim != variant_config("transformer", config).dim


def test_unknown_variant_is_a_user_error():
    with pytest.raises(UserError, match="hope_no_cms"):
        build_model("hopee", "tiny")


@pytest.mark.parametrize("variant", ["hope", "hope_no_selfmod"])
def test_recompute_changes_no_number_and_keeps_far_less_for_backward(variant):
    """Execution(recompute=True): each SR-Titans chunk step and each CMS step keeps only its inputs for backward
    and runs again there. The loss and every gradient are bit-identical; what is saved for backward drops to a
    quarter or less, which neither layer's recomputation achieves alone. T = 70 runs full chunks, two full CMS
    steps (32 tokens) and a tail of each."""
    from hopelab.bench import count_saved_activations

    eager, x = make(variant, context_len=72), tokens(T=70)
    saved, losses, grads = [], [], []
    for model in (eager, same_model(eager, Execution(recompute=True))):
        assert len(fast_memory_layers(model)) == 3  # one SR-Titans layer, two CMS levels
        with count_saved_activations() as box:
            loss = next_token_loss(model(x), x)
        saved.append(box["bytes"])
        losses.append(loss)
        grads.append(param_grads(model, loss))
    assert torch.equal(losses[0], losses[1])
    for name, g in grads[0].items():
        assert g is not None and torch.equal(g, grads[1][name]), name
    assert saved[1] < 0.25 * saved[0], saved


# the parameters a seed drew before each module initialised itself (Σ|p|, Σp²): a seed still draws them
INIT_CHECKSUMS = {
    "hope": (936.4397359645291, 527.0841655870989),
    "hope_no_cms": (866.0631561465034, 452.09475918453813),
    "hope_no_selfmod": (347.1669371355856, 302.8694721424928),
    "hope_no_surprise": (936.4397359645291, 527.0841655870989),
    "hope_attention": (172.04630252469678, 124.20062315150763),
    "titans": (285.9350977594463, 238.076881877489),
    "transformer": (111.89321774412838, 49.48831694409462),
    "transformer_matched": (202.66493477262213, 75.04720824318503),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_seed_draws_the_same_initial_model(variant):
    torch.manual_seed(0)
    params = [p.detach().double() for p in build_model(variant, CFG).parameters()]
    checksum = (sum(p.abs().sum() for p in params).item(), sum((p * p).sum() for p in params).item())
    assert checksum == pytest.approx(INIT_CHECKSUMS[variant], rel=1e-12, abs=0)


def test_execution_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="impl"):
        Execution(impl="fast")
    with pytest.raises(ValueError, match="chunked"):
        Execution(impl="reference", compile=True)


@pytest.mark.parametrize("period,T", [(1, 37), (4, 10), (4, 70), (8, 5), (40, 85)])
@pytest.mark.parametrize("first_order", [False, True])
def test_cms_level_steps_equal_the_reference(period, T, first_order):
    """The layer runs a level in steps of a few whole blocks (dual form within a step, the weights materialised
    between steps); that equals Eq 71 token by token over the whole sequence, from a per-sample state: full
    steps, then a tail with complete blocks and a partial one, and when no block completes."""
    torch.manual_seed(4)
    B, D, h = 2, 5, 8
    level = CMSLevel(D, h, period, 0.05, n_layers=1, first_order=first_order).to(DT)
    x = torch.randn(B, T, D, dtype=DT, requires_grad=True)
    up = (0.5 * torch.randn(B, h, D, dtype=DT)).requires_grad_()
    down = (0.5 * torch.randn(B, D, h, dtype=DT)).requires_grad_()
    branch, end = level(x, CMSLevelState(up, down, pos=0))
    lr = F.softplus(level.lr_raw)
    ref = cms_level_reference(x, level.W_value(x), up, down, level.b_up, level.b_down, lr, period, first_order)
    inputs = [x, up, down, level.b_up, level.b_down, level.W_value.weight, level.lr_raw]
    outs, grads = [(branch, end.up, end.down), (ref[0], *ref[1])], []
    for out in outs:
        gen = torch.Generator().manual_seed(0)
        total = sum((t * torch.randn(t.shape, dtype=DT, generator=gen)).sum() for t in out)
        grads.append(torch.autograd.grad(total, inputs, allow_unused=True))
    for a, b in zip(outs[0] + grads[0], outs[1] + grads[1]):
        assert (a is None) == (b is None)  # no complete block: nothing reaches the learning rate
        assert a is None or torch.allclose(a, b, atol=1e-11, rtol=1e-9), (a - b).abs().max()


def test_the_default_gate_rule_filters_on_a_fresh_tiny_model():
    """README's rule for the default gate (relative, z > 0) passes 5-95% of tokens at initialisation, where the
    dissection's absolute τ = 0.02 passes every token (the surprise's floor is above it)."""
    from hopelab.config import get_scale

    cfg = get_scale("tiny").model
    x = torch.randint(0, cfg.vocab_size, (4, cfg.context_len), generator=torch.Generator().manual_seed(0))
    rates = {}
    for mode, tau in ((cfg.surprise_mode, cfg.surprise_threshold), ("absolute", 0.02)):
        torch.manual_seed(0)
        model = build_model("hope", dataclasses.replace(cfg, surprise_mode=mode, surprise_threshold=tau)).eval()
        with torch.no_grad(), record_hooks(model, ["*hook_gate"]) as rec:
            model(x)
        rates[mode] = [float(t.float().mean()) for t in rec.values()]
    assert len(rates[cfg.surprise_mode]) == cfg.n_layers
    assert all(0.05 <= r <= 0.95 for r in rates[cfg.surprise_mode]), rates
    assert all(r == 1.0 for r in rates["absolute"]), rates
