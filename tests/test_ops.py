"""The fast paths in hopelab.ops agree with their token-by-token references, in outputs and gradients."""

import pytest
import torch
import torch.nn.functional as F

from hopelab.ops.cms import cms_level, cms_level_reference
from hopelab.ops.dgd import (
    chunk_decay,
    dgd_chunk_factors,
    dgd_chunk_reference,
    dgd_end_state,
    dgd_linear_memory_chunk,
    dgd_linear_memory_chunk_reference,
    dgd_mlp_memory_chunk,
    dgd_mlp_memory_chunk_reference,
    dgd_read,
)
from hopelab.ops.memory import huber_error, mlp_memory_apply, mlp_memory_inner_grad, mlp_memory_inner_grad_autograd
from hopelab.ops.momentum import momentum_chunk, momentum_chunk_reference
from hopelab.ops.surprise import surprise_gate

DT = torch.float64


def _grads(outputs, inputs):
    weights = [torch.randn_like(o) for o in outputs]
    total = sum((o * w).sum() for o, w in zip(outputs, weights))
    return torch.autograd.grad(total, inputs, allow_unused=True)


def _assert_same(fast, ref, inputs, tol=1e-11):
    for a, b in zip(fast, ref):
        assert torch.allclose(a, b, atol=tol, rtol=1e-9), (a - b).abs().max()
    torch.manual_seed(123)
    g_fast = _grads(fast, inputs)
    torch.manual_seed(123)
    g_ref = _grads(ref, inputs)
    for a, b in zip(g_fast, g_ref):
        assert (a is None) == (b is None)
        if a is None:
            continue
        assert torch.allclose(a, b, atol=tol, rtol=1e-9), (a - b).abs().max()


def dgd_chunk(S0, keys, grads, eta, log_alpha, queries=None, precondition=True):
    """Chunk-wise DGD from the pieces the memory updates are built of: (reads or None, chunk-end state)."""
    decay = chunk_decay(log_alpha)
    w = dgd_chunk_factors(S0, keys, grads, eta, decay, precondition)
    reads = dgd_read(S0, w, keys, decay, queries) if queries is not None else None
    return reads, dgd_end_state(S0, w, keys, decay)


@pytest.mark.parametrize("precondition", [True, False])
@pytest.mark.parametrize("C", [1, 5])
def test_dgd_chunk_matches_reference(precondition, C):
    torch.manual_seed(0)
    B, M, H, din, dout = 2, 3, 2, 4, 6
    S0 = torch.randn(B, M, H, dout, din, dtype=DT, requires_grad=True)
    keys = F.normalize(torch.randn(B, 1, H, C, din, dtype=DT), dim=-1).requires_grad_()  # shared by memories
    grads = torch.randn(B, M, H, C, dout, dtype=DT, requires_grad=True)
    queries = torch.randn(B, 1, H, C, din, dtype=DT, requires_grad=True)
    eta = (0.9 * torch.rand(B, 1, H, C, dtype=DT)).requires_grad_()
    log_alpha = torch.log(0.5 + 0.5 * torch.rand(B, 1, H, C, dtype=DT)).requires_grad_()
    inputs = [S0, keys, grads, queries, eta, log_alpha]
    fast = dgd_chunk(S0, keys, grads, eta, log_alpha, queries, precondition)
    ref = dgd_chunk_reference(S0, keys, grads, eta, log_alpha, queries, precondition)
    _assert_same(fast, ref, inputs)


def _memory_chunk_inputs(C, mlp: bool):
    """Random inputs of one chunk of M = 3 stacked memories, per sample and head, as SR-Titans passes them."""
    torch.manual_seed(6)
    B, H, M, d, h = 2, 2, 3, 4, 5

    def leaf(*shape, scale=1.0):
        return (scale * torch.randn(*shape, dtype=DT)).requires_grad_()

    keys = F.normalize(torch.randn(B, H, C, d, dtype=DT), dim=-1).requires_grad_()
    queries = F.normalize(torch.randn(B, H, C, d, dtype=DT), dim=-1).requires_grad_()
    eta = (0.9 * torch.rand(B, H, C, dtype=DT)).requires_grad_()
    log_alpha = torch.log(0.5 + 0.5 * torch.rand(B, H, C, dtype=DT)).requires_grad_()
    if mlp:  # W1, W2, keys, queries, hidden, error, delta, η, log α
        return [leaf(B, H, M, d, h), leaf(B, H, M * h, d), keys, queries, leaf(B, H, M, C, h), leaf(B, H, M, C, d),
                leaf(B, H, M, C, h), eta, log_alpha]
    # W, keys, queries, error, η, log α
    return [leaf(B, H, M * d, d), keys, queries, leaf(B, H, M, C, d), eta, log_alpha]


@pytest.mark.parametrize("shortcuts", [False, True])
@pytest.mark.parametrize("C", [1, 5])
def test_dgd_mlp_memory_chunk_matches_reference(C, shortcuts):
    """The MLP memories' update as the layer calls it (with its shortcuts: W2 k and the read memory's weights
    as views of its own split, or without) equals Eq 88 token by token."""
    inputs = _memory_chunk_inputs(C, mlp=True)
    W1, W2, keys, h = inputs[0], inputs[1], inputs[2], inputs[0].shape[-1]
    kwargs = {}
    if shortcuts:
        last_W2 = W2.split([W2.shape[-2] - h, h], dim=-2)[1]
        kwargs = {"S0k": keys @ W2.transpose(-1, -2), "read_weights": (W1[..., -1, :, :], last_W2)}
    fast = dgd_mlp_memory_chunk(*inputs, **kwargs)
    ref = dgd_mlp_memory_chunk_reference(*inputs)
    _assert_same(fast, ref, inputs)


@pytest.mark.parametrize("shortcuts", [False, True])
@pytest.mark.parametrize("C", [1, 5])
def test_dgd_linear_memory_chunk_matches_reference(C, shortcuts):
    inputs = _memory_chunk_inputs(C, mlp=False)
    W, d = inputs[0], inputs[0].shape[-1]
    kwargs = {"read_weight": W.split([W.shape[-2] - d, d], dim=-2)[1]} if shortcuts else {}
    fast = dgd_linear_memory_chunk(*inputs, **kwargs)
    ref = dgd_linear_memory_chunk_reference(*inputs)
    _assert_same(fast, ref, inputs)


def test_dgd_linear_step_is_eq93():
    """One token of Eq 93: W (αI − η k kᵀ) − η (W k − v̂) kᵀ."""
    torch.manual_seed(1)
    d = 5
    W = torch.randn(d, d, dtype=DT)
    k = F.normalize(torch.randn(d, dtype=DT), dim=0)
    v_hat = torch.randn(d, dtype=DT)
    eta, alpha = 0.3, 0.9
    expected = W @ (alpha * torch.eye(d, dtype=DT) - eta * torch.outer(k, k)) - eta * torch.outer(W @ k - v_hat, k)
    err = (W @ k - v_hat)[None, :]  # g_t = e_t for a linear memory
    _, got = dgd_chunk(W, k[None, :], err, torch.tensor([eta], dtype=DT), torch.log(torch.tensor([alpha], dtype=DT)))
    assert torch.allclose(got, expected, atol=1e-12)


def test_mlp_inner_grad_matches_autograd():
    torch.manual_seed(2)
    d, h, C = 4, 7, 3
    W1, W2 = torch.randn(d, h, dtype=DT), torch.randn(h, d, dtype=DT)
    k, target = torch.randn(C, d, dtype=DT), torch.randn(C, d, dtype=DT)
    out, pre, hidden = mlp_memory_apply(W1, W2, k)
    error = out - target
    delta = mlp_memory_inner_grad(W1, pre, error)
    g1, g2 = mlp_memory_inner_grad_autograd(W1, W2, k, target)
    assert torch.allclose(error.T @ hidden, g1, atol=1e-12)  # Σ_t e_t u_tᵀ
    assert torch.allclose(delta.T @ k, g2, atol=1e-12)  # Σ_t δ_t k_tᵀ


@pytest.mark.parametrize("C", [1, 6])
def test_momentum_chunk_matches_reference(C):
    torch.manual_seed(3)
    B, H, din, dout = 2, 2, 4, 3
    M0 = torch.randn(B, H, dout, din, dtype=DT, requires_grad=True)
    S0 = torch.randn(B, H, dout, din, dtype=DT, requires_grad=True)
    keys = torch.randn(B, H, C, din, dtype=DT, requires_grad=True)
    grads = torch.randn(B, H, C, dout, dtype=DT, requires_grad=True)
    queries = torch.randn(B, H, C, din, dtype=DT, requires_grad=True)
    lr = torch.rand(B, H, C, dtype=DT, requires_grad=True)
    log_beta = torch.log(torch.rand(B, H, C, dtype=DT)).requires_grad_()
    log_keep = torch.log(0.8 + 0.2 * torch.rand(B, H, C, dtype=DT)).requires_grad_()
    inputs = [M0, S0, keys, grads, queries, lr, log_beta, log_keep]
    fast = momentum_chunk(M0, S0, keys, grads, lr, log_beta, log_keep, queries)
    ref = momentum_chunk_reference(M0, S0, keys, grads, lr, log_beta, log_keep, queries)
    _assert_same(fast, ref, inputs)


@pytest.mark.parametrize("period,T", [(1, 5), (4, 12), (4, 10), (8, 5), (4, 70), (1, 37), (40, 85)])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("shared_init", [False, True])
def test_cms_level_matches_reference(period, T, first_order, shared_init):
    """The dual form equals Eq 71 token by token, with a per-sample state or one shared initial state ([h, D]),
    and when no block completes. (The layer's steps of it: tests/test_model.py.)"""
    torch.manual_seed(4)
    B, D, h = 2, 5, 8
    lead = () if shared_init else (B,)
    x = torch.randn(B, T, D, dtype=DT, requires_grad=True)
    values = torch.randn(B, T, D, dtype=DT, requires_grad=True)
    # weights and step small enough that 70 updates stay finite
    up = (0.5 * torch.randn(*lead, h, D, dtype=DT)).requires_grad_()
    down = (0.5 * torch.randn(*lead, D, h, dtype=DT)).requires_grad_()
    b_up = torch.randn(h, dtype=DT, requires_grad=True)
    b_down = torch.randn(D, dtype=DT, requires_grad=True)
    lr = torch.tensor(0.05, dtype=DT, requires_grad=True)
    inputs = [x, values, up, down, b_up, b_down, lr]
    fb, (fu, fd) = cms_level(x, values, up, down, b_up, b_down, lr, period, first_order)
    rb, (ru, rd) = cms_level_reference(x, values, up, down, b_up, b_down, lr, period, first_order)
    _assert_same([fb, fu, fd], [rb, ru, rd], inputs)


@pytest.mark.parametrize("level", [cms_level, cms_level_reference])
def test_cms_level_is_causal_and_updates_only_at_period_ends(level):
    torch.manual_seed(5)
    B, T, D, h, period = 1, 72, 4, 6, 4
    x, values = torch.randn(B, T, D, dtype=DT), torch.randn(B, T, D, dtype=DT)
    up, down = torch.randn(B, h, D, dtype=DT), torch.randn(B, D, h, dtype=DT)
    zeros_h, zeros_d = torch.zeros(h, dtype=DT), torch.zeros(D, dtype=DT)
    positions = []
    base, _ = level(x, values, up, down, zeros_h, zeros_d, 0.1, period, record=lambda p, u, d: positions.append(p))
    assert positions == list(range(period, T + 1, period))
    x2 = x.clone()
    x2[:, 5] += 1.0  # token 5 (second block) changes: first two blocks' earlier tokens must not move
    out2, _ = level(x2, values, up, down, zeros_h, zeros_d, 0.1, period)
    assert torch.equal(out2[:, :5], base[:, :5])
    assert not torch.allclose(out2[:, 8:], base[:, 8:])  # the write reaches later blocks


def test_surprise_gate_modes():
    s = torch.tensor([[0.001, 0.5, 0.03, 2.0]], dtype=DT)
    gate, _ = surprise_gate(s, "absolute", 0.02, None)
    assert gate.tolist() == [[0.0, 1.0, 1.0, 1.0]]
    gate, _ = surprise_gate(s, "off", 0.02, None)
    assert gate.tolist() == [[1.0] * 4]
    # relative: causal z-score; splitting the sequence with carried stats gives the same gates
    gate_full, stats_full = surprise_gate(s, "relative", 0.0, None)
    g1, st = surprise_gate(s[:, :2], "relative", 0.0, None)
    g2, st2 = surprise_gate(s[:, 2:], "relative", 0.0, st)
    assert torch.equal(torch.cat([g1, g2], 1), gate_full) and torch.allclose(st2, stats_full)
    assert gate_full[0, 0] == 0 and gate_full[0, 1] == 1 and gate_full[0, 3] == 1
    with pytest.raises(ValueError):
        surprise_gate(s, "bogus", 0.0, None)


def test_fused_activation_grad_matches_closed_form_twice_differentiable():
    from hopelab.ops.memory import act_grad, act_grad_times

    x = torch.randn(7, dtype=DT, requires_grad=True)
    up = torch.randn(7, dtype=DT, requires_grad=True)
    assert torch.allclose(act_grad_times(up, x), act_grad(x) * up, atol=1e-14)
    g1 = torch.autograd.grad(act_grad_times(up, x).sum(), (x, up))
    g2 = torch.autograd.grad((act_grad(x) * up).sum(), (x, up))
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g1, g2))


def test_huber_error_is_the_gradient_of_the_huber_loss_on_the_error_norm():
    """huber_error(e, c) = ∂/∂e of ½‖e‖² (‖e‖ ≤ c) or c‖e‖ − ½c² (beyond), by autograd; None is the L2 loss;
    exactly e below the cap; finite gradients at e = 0 (twice differentiable where the outer loss needs it)."""
    g = torch.Generator().manual_seed(0)
    e = (torch.randn(64, 8, generator=g, dtype=torch.float64) * torch.rand(64, 1, generator=g, dtype=torch.float64) * 4)
    e = torch.cat([e, torch.zeros(1, 8, dtype=torch.float64)]).requires_grad_(True)
    c = 2.0
    norm = e.norm(dim=-1).clamp_min(1e-300)
    loss = torch.where(norm <= c, 0.5 * norm**2, c * norm - 0.5 * c * c).sum()
    (want,) = torch.autograd.grad(loss, e, create_graph=True)
    got = huber_error(e, c)
    small = e.detach().norm(dim=-1) <= c
    assert 0 < small.sum() < len(small)  # both branches are exercised
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.equal(got[small], e[small])  # bit for bit below the cap: a run that never reaches it is unchanged
    assert torch.allclose(got.norm(dim=-1).max(), torch.tensor(c, dtype=torch.float64))
    assert huber_error(e, None) is e
    (grad,) = torch.autograd.grad(got.square().sum(), e)
    assert torch.isfinite(grad).all()
