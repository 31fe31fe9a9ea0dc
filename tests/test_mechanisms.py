"""Each HOPE mechanism pinned to the paper by a computation written here, independently of the layers' chunk
code: removing a mechanism (the surprise gate, the DGD preconditioner, self-generated values, the CMS's
in-context writes, first-order's detachments) fails a test below.

The transcriptions read the layers' parameters only and follow the equations token by token:
self-referential Titans (Eq 83, 88-90, 93; MLP memory Eq 89), the Titans baseline, a CMS level (Eq 71).
"""

import contextlib
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from hopelab.config import ModelConfig
from hopelab.layers.cms import CMSLevel
from hopelab.layers.fast_memory import trace_fast_states
from hopelab.layers.hooks import record_hooks
from hopelab.layers.self_ref_titans import SelfReferentialTitans
from hopelab.layers.titans import TitansMemory
from hopelab.models import Execution, build_model
from hopelab.ops.dgd import dgd_linear_memory_chunk, dgd_linear_memory_chunk_reference

DT = torch.float64
V = 50
# the absolute gate: the transcriptions write it out (the relative gate's running statistics are checked in
# tests/test_ops.py); closed-gate tests below use both modes
CFG = ModelConfig(vocab_size=V, dim=16, n_layers=1, n_heads=2, context_len=32, chunk_size=4, cms_periods=(4, 8),
                  surprise_mode="absolute")
MEMORIES = ("k", "v", "eta", "alpha", "q", "memory")  # the six memories of Eq 83, in the layer's order


def make(variant="hope", **overrides):
    torch.manual_seed(0)
    return build_model(variant, dataclasses.replace(CFG, **overrides)).to(DT)


def tokens(B=2, T=16, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def gelu_grad(x):
    """σ'(x) of exact GELU: Φ(x) + x φ(x)."""
    return torch.special.ndtr(x) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def outer(a, b):
    """a bᵀ per leading index: [..., m], [..., n] -> [..., m, n]"""
    return a.unsqueeze(-1) * b.unsqueeze(-2)


def matvec(W, z):
    return (W @ z.unsqueeze(-1)).squeeze(-1)


CLIPPED = []  # the share of errors each transcription clipped, so a test can check its clip was exercised


def huber(e, c):
    """∂/∂e of the Huber loss on ‖e‖: e where ‖e‖ ≤ c, else c e/‖e‖ (written apart from hopelab.ops.memory)."""
    if c is None:
        return e
    norm = e.norm(dim=-1, keepdim=True)
    CLIPPED.append((norm > c).double().mean().item())
    return torch.where(norm > c, c * e / norm, e)


def grads_of(out, params, seed=0):
    """Gradients of a fixed random projection of `out`."""
    weights = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad((out * weights).sum(), params, allow_unused=True)


def assert_same_grads(names, got, want, atol=1e-10):
    for name, a, b in zip(names, got, want):
        assert (a is None) == (b is None), name
        assert a is None or torch.allclose(a, b, atol=atol, rtol=1e-8), (name, (a - b).abs().max().item())


# ---------------------------------------------------------------------------------------------------------
# self-referential Titans, token by token


def transcribe_self_ref_titans(layer, x, first_order=False):
    """Eq 83/88/93 (linear) and Eq 89 (MLP memory) token by token, chunk-wise as Eq 90: projections,
    self-generated values v̂_□ = M_□(v) and inner gradients at the chunk-start state; every token then writes
    every memory, M ← M (α I − η k kᵀ) − η ∇L (for the MLP the factor acts on W2, α alone decays W1), with η
    gated by the surprise ½‖M_memory(k) − v̂_memory‖² > τ and averaged over the chunk; the read is
    M_memory(q_t) after token t's write (the layer's documented read index). first_order detaches e, δ, σ(W2 k)."""
    cfg = layer.cfg
    assert cfg.surprise_mode == "absolute" and cfg.chunk_grad == "mean" and cfg.selfmod
    B, T, D = x.shape
    H, d, C = cfg.n_heads, cfg.head_dim, cfg.chunk_size
    xc, _ = layer.conv(x, layer.conv.initial_tail(B))
    xs, qs = xc.view(B, T, H, d), layer.W_q(xc).view(B, T, H, d)  # token t: [B, H, d]
    linear = cfg.memory == "linear"
    if linear:
        state = {n: (layer.init_W[m].expand(B, H, d, d),) for m, n in enumerate(MEMORIES)}
    else:
        state = {n: (layer.init_W1[m].expand(B, -1, -1, -1), layer.init_W2[m].expand(B, -1, -1, -1))
                 for m, n in enumerate(MEMORIES)}

    def apply(W, z):  # M(z), z [B, H, d]
        return matvec(W[0], z) if linear else z + matvec(W[0], F.gelu(matvec(W[1], z)))

    eye = torch.eye(d, dtype=x.dtype)
    reads, gates = [], []
    for t in range(T):
        if t % C == 0:
            start = dict(state)  # the chunk-start state (Eq 90)
        xt, qt = xs[:, t], qs[:, t]
        k = F.normalize(apply(start["k"], xt), dim=-1)
        v = F.normalize(apply(start["v"], xt), dim=-1)
        q = F.normalize(apply(start["q"], qt), dim=-1)
        eta = cfg.eta_max * torch.sigmoid((apply(start["eta"], xt) * layer.eta_readout).sum(-1) + layer.eta_bias)
        alpha = torch.sigmoid((apply(start["alpha"], xt) * layer.alpha_readout).sum(-1) + layer.alpha_bias)
        errors = {n: apply(start[n], k) - apply(start[n], v) for n in MEMORIES}  # e = M(k) − v̂,  v̂ = M(v)
        surprise = 0.5 * (errors["memory"] ** 2).sum(-1).mean(1)  # [B]
        gate = (surprise > cfg.surprise_threshold).to(x.dtype)[:, None]  # [B, 1]
        gates.append(gate)
        errors = {n: huber(e, cfg.inner_error_clip) for n, e in errors.items()}  # the written errors
        eta = (eta * gate / C)[..., None, None]  # [B, H, 1, 1]
        alpha = (alpha ** gate)[..., None, None]  # a closed gate neither writes nor decays
        precondition = alpha * eye - eta * outer(k, k)  # α I − η k kᵀ
        for n in MEMORIES:
            e = errors[n]
            if linear:
                (W,) = state[n]
                g = e.detach() if first_order else e
                state[n] = (W @ precondition - eta * outer(g, k),)  # Eq 93
            else:
                (W1, W2), (W1_0, W2_0) = state[n], start[n]
                pre = matvec(W2_0, k)
                u = F.gelu(pre)
                delta = gelu_grad(pre) * matvec(W1_0.transpose(-1, -2), e)  # ∇_{W2} L = δ kᵀ
                if first_order:
                    e, u, delta = e.detach(), u.detach(), delta.detach()
                state[n] = (alpha * W1 - eta * outer(e, u), W2 @ precondition - eta * outer(delta, k))
        reads.append(apply(state["memory"], q))
    o = torch.stack(reads, dim=1).reshape(B, T, D)
    return layer.W_o(layer.out_norm(o)), torch.cat(gates, dim=1)


# a threshold that closes the gate on part of the tokens (checked below), so the gate is exercised both ways
MIXED_THRESHOLD = {"linear": 0.45, "mlp": 0.3}


# a Huber clip that caps part of the inner errors (about a third at these seeds; checked below)
MIXED_CLIP = {"linear": 1.2, "mlp": 0.8, "titans": 1.5}


def self_ref_layer(memory, inner_grad, impl="chunked", clip=False):
    cfg = dataclasses.replace(CFG, memory=memory, inner_grad=inner_grad, surprise_threshold=MIXED_THRESHOLD[memory],
                              inner_error_clip=MIXED_CLIP[memory] if clip else None)
    torch.manual_seed(0)
    return SelfReferentialTitans(cfg, Execution(impl=impl)).to(DT)


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("impl", ["chunked", "reference"])
@pytest.mark.parametrize("inner_grad", ["full", "first_order"])
@pytest.mark.parametrize("memory", ["linear", "mlp"])
def test_self_ref_titans_equals_token_by_token_transcription(memory, inner_grad, impl, clip):
    """The layer's chunks (C = 4 tokens with reads) equal Eq 83/88-93 written token by token: the DGD
    preconditioner, self-generated values and the surprise gate on η and α, in both implementations; and the
    first-order gradient equals the one with e, δ (the W1 that multiplies e included) and σ(W2 k) detached;
    with the Huber clip, the capped errors are what is written while the surprise stays the L2 loss."""
    layer = self_ref_layer(memory, inner_grad, impl, clip)
    x = torch.randn(2, 16, CFG.dim, dtype=DT, generator=torch.Generator().manual_seed(3), requires_grad=True)
    out, _ = layer(x)
    CLIPPED.clear()
    ref, gates = transcribe_self_ref_titans(layer, x, first_order=inner_grad == "first_order")
    assert 0.2 < gates.mean() < 0.8, gates.mean()  # the gate is open on some tokens and closed on others
    if clip:  # the clip caps some errors and leaves others
        assert 0.1 < sum(CLIPPED) / len(CLIPPED) < 0.9, CLIPPED
    assert torch.allclose(out, ref, atol=1e-12, rtol=0), (out - ref).abs().max()
    names, params = zip(*layer.named_parameters())
    assert_same_grads(("x", *names), grads_of(out, (x, *params)), grads_of(ref, (x, *params)))


def test_first_order_is_first_order_in_self_ref_titans():
    """The first-order and the full gradient differ, where the transcription says they should: both reach
    every initial state but M_v's (which only makes targets)."""
    x = torch.randn(2, 16, CFG.dim, dtype=DT, generator=torch.Generator().manual_seed(3))
    grads = {}
    for inner_grad in ("full", "first_order"):
        layer = self_ref_layer("mlp", inner_grad)
        out, _ = layer(x)
        grads[inner_grad] = dict(zip(("W1", "W2"), grads_of(out, (layer.init_W1, layer.init_W2))))
    for name in ("W1", "W2"):
        full, first = grads["full"][name], grads["first_order"][name]
        assert not torch.allclose(full, first)
        assert torch.all(first[1] == 0) and torch.all(first.flatten(1).abs().sum(1)[[0, 2, 3, 4, 5]] > 0)


# ---------------------------------------------------------------------------------------------------------
# the surprise gate and self-generated values, on the whole model


@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_closed_gate_equals_a_model_that_never_writes(mode):
    """τ = +inf: no token writes (η_t → 0) or decays (α_t → 1): the same as a gate-free model whose η is 0 and
    α is 1, and every memory ends the sequence at its initial state."""
    x = tokens()
    closed = make(surprise_mode=mode, surprise_threshold=math.inf).eval()
    never = make(surprise_mode="off").eval()
    with torch.no_grad():
        never.blocks[0].mixer.eta_bias.fill_(-math.inf)  # η = η_max σ(−inf) = 0
        never.blocks[0].mixer.alpha_bias.fill_(math.inf)  # α = σ(+inf) = 1
        out, state = closed(x, return_state=True)
        assert torch.allclose(out, never(x), atol=1e-12, rtol=0)
    start = closed.blocks[0].mixer.initial_state(x.shape[0])
    for end, init in zip(state.blocks[0].mixer.weights, start.weights):
        assert torch.equal(end, init)


def test_open_gate_equals_the_ungated_model():
    x = tokens()
    opened, ungated = make(surprise_threshold=-math.inf), make(surprise_mode="off")
    assert torch.allclose(opened(x), ungated(x), atol=1e-12, rtol=0)
    assert not torch.allclose(make(surprise_threshold=math.inf)(x), ungated(x))  # the gate matters here


@pytest.mark.parametrize("memory", ["linear", "mlp"])
@pytest.mark.parametrize("variant", ["hope", "hope_no_selfmod"])
def test_surprise_is_the_loss_on_self_generated_values(variant, memory):
    """Over the first chunk (the initial state), the surprise hook equals ½ mean_heads ‖M(k_t) − v̂_t‖² with the
    hooked k and v: v̂ = M_memory(v) when self-modifying (Eq 83), v̂ = v for the static ablation."""
    model = make(variant, memory=memory)
    mixer, C, H, d = model.blocks[0].mixer, CFG.chunk_size, CFG.n_heads, CFG.head_dim
    with record_hooks(model, ["blocks.0.mixer.hook_k", "blocks.0.mixer.hook_v", "blocks.0.mixer.hook_surprise"]) as rec:
        model(tokens())
    k, v = (rec[f"blocks.0.mixer.hook_{n}"][:, :C].view(-1, C, H, d) for n in ("k", "v"))  # [B, C, H, d]
    memory_index = -1 if variant == "hope" else 0
    if memory == "linear":
        W = mixer.init_W[memory_index]  # [H, d, d]

        def M(z):
            return torch.einsum("hij,bthj->bthi", W, z)
    else:
        W1, W2 = mixer.init_W1[memory_index], mixer.init_W2[memory_index]

        def M(z):
            return z + torch.einsum("hij,bthj->bthi", W1, F.gelu(torch.einsum("hij,bthj->bthi", W2, z)))

    v_hat = M(v) if variant == "hope" else v
    expected = 0.5 * ((M(k) - v_hat) ** 2).sum(-1).mean(-1)  # [B, C]
    surprise = rec["blocks.0.mixer.hook_surprise"][:, :C]
    assert torch.allclose(surprise, expected, atol=1e-12, rtol=0)
    other = 0.5 * ((M(k) - (v if variant == "hope" else M(v))) ** 2).sum(-1).mean(-1)
    assert not torch.allclose(surprise, other, atol=1e-6)  # the two readings of v̂ are told apart


# ---------------------------------------------------------------------------------------------------------
# DGD's fixed point (Eq 93 as printed)


@pytest.mark.parametrize("eta", [0.1, 0.3])
def test_dgd_fixed_point_is_half_the_value(eta):
    """Writing the same (k, v̂) again and again with α = 1 converges to M k = v̂/2 (the preconditioner and the
    L2 gradient both count M k kᵀ); the plain delta rule (no preconditioner) converges to M k = v̂."""
    gen = torch.Generator().manual_seed(0)
    d = 6
    k = F.normalize(torch.randn(1, d, dtype=DT, generator=gen), dim=-1)  # [1, d]
    v_hat = torch.randn(d, dtype=DT, generator=gen)
    W0 = torch.randn(d, d, dtype=DT, generator=gen)
    rate, log_alpha = torch.full((1,), eta, dtype=DT), torch.zeros(1, dtype=DT)
    for chunk in (dgd_linear_memory_chunk, dgd_linear_memory_chunk_reference):
        W = W0
        for _ in range(200):  # one token per chunk: the gradient at the current state
            error = (W @ k[0] - v_hat).view(1, 1, d)  # [M, n, d]   M k − v̂
            _, W = chunk(W, k, k, error, rate, log_alpha)
        assert torch.allclose(W @ k[0], v_hat / 2, atol=1e-10), chunk.__name__
    W = W0
    for _ in range(200):  # the delta rule: W ← W − η (W k − v̂) kᵀ
        W = W - eta * outer(W @ k[0] - v_hat, k[0])
    assert torch.allclose(W @ k[0], v_hat, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------
# the Titans baseline, token by token


def transcribe_titans(layer, x, first_order=False):
    """S ← β S − θ(1 − β) ∇L(M_0; k, v),  M ← a M + S,  o_t = M_t(q_t), M(z) = z + W1 σ(W2 z), gradients at the
    chunk-start state M_0 and averaged over the chunk. first_order detaches e, δ and σ(W2 k)."""
    cfg = layer.cfg
    B, T, D = x.shape
    H, d, C = cfg.n_heads, cfg.head_dim, cfg.chunk_size
    xc, _ = layer.conv(x, layer.conv.initial_tail(B))

    def heads(lin):
        return F.normalize(lin(xc).view(B, T, H, d), dim=-1)

    k, v, q = heads(layer.W_k), heads(layer.W_v), heads(layer.W_q)
    lr = cfg.eta_max * torch.sigmoid(layer.W_lr(xc))  # [B, T, H]
    beta, keep = torch.sigmoid(layer.W_momentum(xc)), torch.sigmoid(layer.W_keep(xc))
    W1, W2 = layer.init_W1.expand(B, -1, -1, -1), layer.init_W2.expand(B, -1, -1, -1)
    S1, S2 = torch.zeros_like(W1), torch.zeros_like(W2)
    reads = []
    for t in range(T):
        if t % C == 0:
            W1_0, W2_0 = W1, W2
        kt = k[:, t]
        pre = matvec(W2_0, kt)
        u = F.gelu(pre)
        e = huber(kt + matvec(W1_0, u) - v[:, t], cfg.inner_error_clip) / C
        delta = gelu_grad(pre) * matvec(W1_0.transpose(-1, -2), e)
        if first_order:
            e, u, delta = e.detach(), u.detach(), delta.detach()
        b, a = beta[:, t, :, None, None], keep[:, t, :, None, None]
        step = lr[:, t, :, None, None] * (1 - b)
        S1, S2 = b * S1 - step * outer(e, u), b * S2 - step * outer(delta, kt)
        W1, W2 = a * W1 + S1, a * W2 + S2
        qt = q[:, t]
        reads.append(qt + matvec(W1, F.gelu(matvec(W2, qt))))
    o = torch.stack(reads, dim=1).reshape(B, T, D)
    return layer.W_o(layer.out_norm(o))


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("inner_grad", ["full", "first_order"])
def test_titans_equals_token_by_token_transcription(inner_grad, clip):
    torch.manual_seed(0)
    cfg = dataclasses.replace(CFG, inner_grad=inner_grad, inner_error_clip=MIXED_CLIP["titans"] if clip else None)
    layer = TitansMemory(cfg).to(DT)
    x = torch.randn(2, 16, CFG.dim, dtype=DT, generator=torch.Generator().manual_seed(3), requires_grad=True)
    out, _ = layer(x)
    CLIPPED.clear()
    ref = transcribe_titans(layer, x, first_order=inner_grad == "first_order")
    if clip:
        assert 0.1 < sum(CLIPPED) / len(CLIPPED) < 0.9, CLIPPED
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)
    names, params = zip(*layer.named_parameters())
    assert_same_grads(("x", *names), grads_of(out, (x, *params)), grads_of(ref, (x, *params)))


# ---------------------------------------------------------------------------------------------------------
# a CMS level, token by token; its writes in eval and under no_grad


def transcribe_cms_level(level, x, first_order=False):
    """Eq 71: every token reads f(x_t) = W_down σ(W_up x_t + b_up) + b_down (the branch) at the weights of its
    block's start; the block's mean of ∇ ½‖k_t + f(k_t) − v_t‖² (k = x, or W_k x under "kv"; v = W_v x) is applied
    at its end with step lr. first_order detaches e, δ and σ(W_up k)."""
    B, T, _ = x.shape
    P = level.period
    up, down = level.init_up.expand(B, -1, -1), level.init_down.expand(B, -1, -1)
    keys = level.W_key(x) if level.objective == "kv" else x
    values, lr = level.W_value(x), F.softplus(level.lr_raw)
    acc_up, acc_down, reads = 0.0, 0.0, []
    for t in range(T):
        reads.append(matvec(down, F.gelu(matvec(up, x[:, t]) + level.b_up)) + level.b_down)
        k = keys[:, t]
        pre = matvec(up, k) + level.b_up
        u = F.gelu(pre)
        e = huber(k + matvec(down, u) + level.b_down - values[:, t], level.error_clip)
        delta = gelu_grad(pre) * matvec(down.transpose(-1, -2), e)
        if first_order:
            e, u, delta = e.detach(), u.detach(), delta.detach()
        acc_up, acc_down = acc_up + outer(delta, k), acc_down + outer(e, u)
        if (t + 1) % P == 0:
            up, down = up - lr / P * acc_up, down - lr / P * acc_down
            acc_up, acc_down = 0.0, 0.0
    return torch.stack(reads, dim=1), (up, down)


# a CMS error cap (units of √D) that caps part of the errors at these seeds (checked below)
MIXED_CMS_CLIP = {"reconstruct": 0.001, "kv": 1.4}


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("impl", ["chunked", "reference"])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("objective", ["reconstruct", "kv"])
def test_cms_level_equals_token_by_token_transcription(objective, first_order, impl, clip):
    """T = 70 at period 4: two full steps of the layer and a tail with a partial block; with the Huber cap on
    part of the errors."""
    torch.manual_seed(0)
    level = CMSLevel(6, 8, 4, 0.05, n_layers=1, first_order=first_order, execution=Execution(impl=impl),
                     objective=objective, error_clip=MIXED_CMS_CLIP[objective] if clip else None).to(DT)
    x = torch.randn(2, 70, 6, dtype=DT, generator=torch.Generator().manual_seed(3), requires_grad=True)
    branch, state = level(x)
    CLIPPED.clear()
    ref, (up, down) = transcribe_cms_level(level, x, first_order)
    if clip:
        assert 0.1 < sum(CLIPPED) / len(CLIPPED) < 0.9, sum(CLIPPED) / len(CLIPPED)
    for a, b in ((branch, ref), (state.up, up), (state.down, down)):
        assert torch.allclose(a, b, atol=1e-12, rtol=0), (a - b).abs().max()
    names, params = zip(*level.named_parameters())
    assert_same_grads(("x", *names), grads_of(branch, (x, *params)), grads_of(ref, (x, *params)))


@pytest.mark.parametrize("mode", ["eval", "no_grad", "eval+no_grad"])
@pytest.mark.parametrize("objective", ["reconstruct", "kv"])
def test_cms_fast_weights_change_in_eval_and_no_grad_at_period_positions(mode, objective):
    """Both levels' fast weights, read from the state the model returns after each prefix, change between
    tokens t − 1 and t exactly when t is a multiple of the level's period (Eq 71), in eval and under no_grad."""
    model = make(cms_objective=objective)
    if "eval" in mode:
        model.eval()
    x, levels = tokens(), model.blocks[0].cms.levels
    states = [[lv.initial_state(x.shape[0]) for lv in levels]]
    with torch.no_grad() if "no_grad" in mode else contextlib.nullcontext():
        for t in range(1, x.shape[1] + 1):
            states.append(model(x[:, :t], return_state=True)[1].blocks[0].cms)
    for i, period in enumerate(CFG.cms_periods):
        for t in range(1, x.shape[1] + 1):
            before, after = states[t - 1][i], states[t][i]
            # runs of different lengths round differently: a write moves the weights by far more than 1e-10
            moved = tuple(bool((a - b).abs().max() > 1e-10) for a, b in ((before.up, after.up),
                                                                         (before.down, after.down)))
            assert moved == ((t % period == 0),) * 2, (i, t, moved)


def test_huber_clip_stops_the_runaway_of_chunk_start_gradients():
    """With the L2 inner loss as printed, C gradients taken at one chunk-start state can run away on a
    repetitive stream: a large error makes a large write, which makes a larger error in the next chunk (found
    in training at lr 3e-3: NaN at step 279 inside a run of repeated tokens). Here meta-states scaled ×3 and a
    3-token loop make M_memory's W1 grow by more than 10⁶ under L2 and by less than 10% under the Huber clip."""

    def growth(clip):
        cfg = ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, context_len=128, chunk_size=16,
                          inner_error_clip=clip, surprise_mode="off")
        torch.manual_seed(2)
        model = build_model("hope", cfg).to(DT)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "init_W" in name:
                    p.mul_(3.0)
        x = torch.tensor([[5, 9, 2] * 42 + [1, 1]])  # [1, 128]
        with torch.no_grad(), trace_fast_states(model) as trace:
            model(x)
        norms = [r.states["W1"].norm().item() for r in trace.records if r.key.endswith("mixer.memory")]
        return max(norms) / norms[0]

    assert growth(None) > 1e6
    assert growth(3.0) < 1.1
