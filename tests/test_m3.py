"""M3 (hopelab.optim.m3) against a literal transcription of the paper's Algorithm 1, its AdamW half against
torch's AdamW, and `optimizer=m3` training a tiny model."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from hopelab.config import ModelConfig, TrainConfig
from hopelab.errors import UserError
from hopelab.lit.module import LitLM, lm_loss
from hopelab.optim import M3, newton_schulz
from hopelab.run.spec import check_train_config, parse_overrides

F64 = dict(dtype=torch.float64)


def ns_literal(m: torch.Tensor, T: int) -> torch.Tensor:
    """NewtonSchulz_T: Q_0 = M/‖M‖, Q_{i+1} = Q_i (3I - Q_iᵀ Q_i)/2 (0 for M = 0); [a, b, ...] as [a, b·...]."""
    M = m.reshape(m.shape[0], -1)
    if float(torch.linalg.norm(M)) == 0.0:
        return torch.zeros_like(m)
    Q = M / torch.linalg.norm(M)
    for _ in range(T):
        Q = 1.5 * Q - 0.5 * Q @ Q.T @ Q
    return Q.reshape(m.shape)


def algorithm1(theta0, grad, n_steps, eta, T, b1, b2, b3, alpha, eps, f, ema=False):
    """Algorithm 1 as printed; the slow sum over the previous chunk's f gradients (each gradient once). With
    `ema`, its prose's reading: each momentum and V a moving average, V bias-corrected as in Adam."""
    theta = theta0.clone()
    M1, M2, V = torch.zeros_like(theta), torch.zeros_like(theta), torch.zeros_like(theta)
    g, thetas, k = {}, [], 0
    while True:
        chunk = sum((g[i] for i in range((k - 1) * f + 1, k * f + 1) if i in g), torch.zeros_like(theta))
        if k == 0:
            pass  # no previous chunk: M2 stays 0
        elif ema:
            M2 = b3 * M2 + (1 - b3) * chunk
        else:
            M2 = M2 + b3 * chunk
        O2 = ns_literal(M2, T)
        for t in range(k * f + 1, (k + 1) * f + 1):
            g[t] = grad(theta)
            if ema:
                M1 = b1 * M1 + (1 - b1) * g[t]
                V = b2 * V + (1 - b2) * g[t] ** 2
                V_hat = V / (1 - b2**t)
            else:
                M1 = M1 + b1 * g[t]
                V = V + b2 * g[t] ** 2
                V_hat = V
            O1 = ns_literal(M1, T)
            theta = theta - eta * (O1 + alpha * O2) / (V_hat.sqrt() + eps)
            thetas.append(theta)
            if t == n_steps:
                return thetas
        k += 1


@pytest.mark.parametrize("averaging", ["sum", "ema"])
@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 2)])
def test_m3_follows_algorithm_1_step_by_step(shape, averaging):
    torch.manual_seed(0)
    A, target = torch.randn(7, shape[0], **F64), torch.randn(7, *shape[1:], **F64)
    theta0 = torch.randn(shape, **F64)

    def loss(theta):
        return ((torch.einsum("ia,a...->i...", A, theta) - target) ** 2).sum()

    def grad(theta):
        theta = theta.detach().requires_grad_()
        return torch.autograd.grad(loss(theta), theta)[0]

    hp = dict(eta=0.03, T=4, b1=0.9, b2=0.99, b3=0.5, alpha=0.7, eps=1e-8, f=3)
    ema = averaging == "ema"
    want = algorithm1(theta0, grad, 11, **hp, ema=ema)
    p = torch.nn.Parameter(theta0.clone())
    opt = M3([p], lr=hp["eta"], betas=(hp["b1"], hp["b2"], hp["b3"]), alpha=hp["alpha"], eps=hp["eps"],
             ns_steps=hp["T"], frequency=hp["f"], averaging=averaging)
    for t, theta in enumerate(want, 1):
        opt.zero_grad()
        loss(p).backward()
        opt.step()
        torch.testing.assert_close(p.data, theta, rtol=1e-10, atol=1e-12, msg=f"step {t}")
    assert not torch.allclose(want[-1], algorithm1(theta0, grad, 11, **dict(hp, alpha=0.0), ema=ema)[-1])  # slow acts
    assert not torch.allclose(want[-1], algorithm1(theta0, grad, 11, **hp, ema=not ema)[-1])  # the readings differ


def test_newton_schulz_approaches_the_polar_factor():
    torch.manual_seed(0)
    m = torch.randn(6, 4, **F64) + 3 * torch.eye(6, 4, **F64)  # well conditioned: the cubic iteration converges fast
    U, _, Vh = torch.linalg.svd(m, full_matrices=False)
    assert torch.allclose(newton_schulz(m, 30), U @ Vh, atol=1e-8)
    assert torch.equal(newton_schulz(torch.zeros(3, 3), 5), torch.zeros(3, 3))


def test_the_non_matrix_groups_take_torch_adamw():
    torch.manual_seed(0)
    w0 = torch.randn(4, **F64)
    ours, ref = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt = M3([{"params": [ours], "m3": False}], lr=0.01, adamw_betas=(0.9, 0.95), weight_decay=0.1)
    opt_ref = torch.optim.AdamW([ref], lr=0.01, betas=(0.9, 0.95), weight_decay=0.1)
    for step in range(5):
        for p, o in ((ours, opt), (ref, opt_ref)):
            o.zero_grad()
            ((p - step) ** 2 * torch.arange(1.0, 5.0, **F64)).sum().backward()
            o.step()
        torch.testing.assert_close(ours.data, ref.data, rtol=1e-12, atol=1e-12)


def test_optimizer_m3_trains_a_tiny_model():
    """`--set optimizer=m3`: M3 on the matrices, AdamW on the rest, and the training loss falls."""
    model_over, train_over = parse_overrides(["optimizer=m3"])
    train = dataclasses.replace(TrainConfig(), **train_over)
    assert train.optimizer == "m3"
    cfg = ModelConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, context_len=16, chunk_size=4, cms_periods=(4, 8))
    torch.manual_seed(0)
    module = LitLM("hope", cfg, train)
    opt = module.configure_optimizers()["optimizer"]
    assert isinstance(opt, M3) and [g["m3"] for g in opt.param_groups] == [True, False]
    matrices = {id(p) for p in opt.param_groups[0]["params"]}
    assert id(module.model.wte.weight) not in matrices  # the embedding (tied output) takes AdamW, as in Muon
    x = torch.randint(0, cfg.vocab_size, (4, cfg.context_len))
    y = x.roll(-1, 1)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = lm_loss(module.model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses[::8]  # 3.49 -> 3.27 (AdamW at this lr: about the same)
    with pytest.raises(UserError, match="unknown optimizer"):
        check_train_config(dataclasses.replace(TrainConfig(), optimizer="sgd"))


def test_m3_resumes_exactly_from_its_state_dict_mid_chunk():
    """What a checkpoint keeps of M3 (its state_dict: fast and slow momenta, V, the slow chunk's gradient sum
    and the step count) resumes bit for bit: interrupted at step 4 (inside the second slow chunk, f = 3), a
    fresh optimizer loaded from the saved state ends where the uninterrupted one does after 8 steps."""
    def run(stop_at=None, resume=None):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(5, 3, **F64))
        b = torch.nn.Parameter(torch.randn(3, **F64))
        opt = M3([dict(params=[w], m3=True), dict(params=[b], m3=False)], lr=1e-2, frequency=3)
        start = 0
        if resume is not None:
            (w_saved, b_saved, state), start = resume
            with torch.no_grad():
                w.copy_(w_saved)
                b.copy_(b_saved)
            opt.load_state_dict(state)
        for step in range(start, 8):
            x = torch.randn(4, 5, **F64, generator=torch.Generator().manual_seed(step))
            opt.zero_grad()
            ((x @ w + b).sin().square().sum()).backward()
            opt.step()
            if step + 1 == stop_at:
                return (w.detach().clone(), b.detach().clone(), copy.deepcopy(opt.state_dict())), stop_at
        return w.detach(), b.detach()

    full = run()
    resumed = run(resume=run(stop_at=4))
    assert torch.equal(full[0], resumed[0]) and torch.equal(full[1], resumed[1])
