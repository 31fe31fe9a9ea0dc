"""The associative memories of self-referential Titans and their inner (in-context) loss gradient.

MLP memory (Eq 89):    M(z) = z + W1 σ(W2 z),  W1: [d, h], W2: [h, d]
Linear memory (Eq 93): M(z) = W z,             W:  [d, d]

Inner loss at token t (L2 regression onto the memory's own value, Eq 83/88):
    L_t(M) = ½ ‖M(k_t) − v̂_t‖²,   e_t = M(k_t) − v̂_t
with gradients that are rank one per token:
    MLP:     ∇_{W1} L_t = e_t u_tᵀ,   u_t = σ(W2 k_t)
             ∇_{W2} L_t = δ_t k_tᵀ,   δ_t = σ'(W2 k_t) ⊙ (W1ᵀ e_t)
    linear:  ∇_{W}  L_t = e_t k_tᵀ
The target v̂_t is a constant of the inner problem (it is what the memory is asked to store); the outer loss
still differentiates through it. All shapes carry arbitrary leading batch dims `...`.

First order (`ModelConfig.inner_grad="first_order"`), one definition for every fast-memory layer (self-referential
Titans, the Titans baseline, each CMS level, whose inner loss has the same form with W_up, W_down in place of
W2, W1): the factors of the inner gradient that are computed from the memory being written are constants of
the outer backward (detached):
    the error      e_t = M(k_t) − v̂_t                 (so nothing reaches k_t, v̂_t or the weights through e_t)
    all of δ_t     = σ'(W2 k_t) ⊙ (W1ᵀ e_t)          (σ'(W2 k_t) and W1 as well as e_t)
    the MLP's hidden keys u_t = σ(W2 k_t)
i.e. the outer loss never differentiates the inner gradient with respect to the memory's weights (the
second-order terms first-order MAML drops), nor through the targets (a memory whose only role is to make
targets, M_v, then learns nothing). What stays differentiable: the memory's inputs where they enter the
update (the keys k_t of ∇L = g_t k_tᵀ and of the DGD preconditioner (α I − η k kᵀ), a CMS level's inputs
x_t), the step sizes η_t and decays α_t, the state carried through each update, and every read.
"full" (the default) differentiates through all of it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def act(x: torch.Tensor) -> torch.Tensor:
    """σ: exact GELU, as in the paper's memory and CMS MLPs."""
    return F.gelu(x)


def act_grad(x: torch.Tensor) -> torch.Tensor:
    """σ'(x) for exact GELU: Φ(x) + x φ(x)."""
    cdf = 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return cdf + x * pdf


def mlp_memory_apply(W1: torch.Tensor, W2: torch.Tensor, z: torch.Tensor):
    """M(z) = z + W1 σ(W2 z).  W1 [..., d, h], W2 [..., h, d], z [..., C, d] -> (out, pre, hidden)."""
    pre = z @ W2.transpose(-1, -2)  # [..., C, h]   W2 z
    hidden = act(pre)  # [..., C, h]   σ(W2 z)
    out = z + hidden @ W1.transpose(-1, -2)  # [..., C, d]
    return out, pre, hidden


class _ActGradTimes(torch.autograd.Function):
    """σ'(pre) ⊙ upstream with a cheap backward. aten.gelu_backward computes the product in one kernel, but
    its own autograd formula (GeluBackwardBackward) is far slower than this one:
        ∂/∂upstream = σ'(pre) ⊙ g,    ∂/∂pre = σ''(pre) ⊙ upstream ⊙ g,    σ''(x) = φ(x) (2 − x²)
    """

    @staticmethod
    def forward(ctx, upstream, pre):
        ctx.save_for_backward(upstream, pre)
        return torch.ops.aten.gelu_backward(upstream, pre)

    @staticmethod
    def backward(ctx, grad):
        upstream, pre = ctx.saved_tensors
        grad = grad.contiguous()  # it often arrives as a transposed view; strided elementwise kernels are slow
        grad_upstream = grad_pre = None
        if ctx.needs_input_grad[0]:
            grad_upstream = torch.ops.aten.gelu_backward(grad, pre)  # σ'(pre) ⊙ g
        if ctx.needs_input_grad[1]:
            square = pre * pre
            grad_pre = torch.exp(-0.5 * square).mul_(_INV_SQRT_2PI).mul_(2.0 - square).mul_(upstream).mul_(grad)
        return grad_upstream, grad_pre


def act_grad_times(upstream: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """σ'(pre) ⊙ upstream, differentiable once in both arguments (the outer loss needs σ'' but never σ''')."""
    return _ActGradTimes.apply(upstream, pre)


def mlp_memory_inner_grad(W1: torch.Tensor, pre_k: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    """δ_t = σ'(W2 k_t) ⊙ (W1ᵀ e_t): the factor of ∇_{W2} L_t = δ_t k_tᵀ.  -> [..., C, h]"""
    return act_grad_times(error @ W1, pre_k)  # [..., C, h]


def huber_error(error: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """The inner error with the Huber inner loss: ∂L_t/∂M(k_t) = e_t min(1, c/‖e_t‖), i.e.
        L_t = ½‖e_t‖²            for ‖e_t‖ ≤ c
        L_t = c‖e_t‖ − ½c²       beyond (the gradient keeps its direction, its norm is capped at c)
    MIRAS's Yaad uses this attentional bias for robustness to outliers. Here it is a guard: with the L2 loss as
    printed, C gradients taken at one chunk-start state can feed a runaway, where a large error makes a large
    write that makes a larger error in the next chunk (README, "Stability"). max_norm None: the L2 loss.
    error [..., d] -> [..., d], exactly `error` where ‖e_t‖ ≤ c."""
    if max_norm is None:
        return error
    square = (error * error).sum(-1, keepdim=True)  # [..., 1]
    limit = max_norm * max_norm
    # clamp_min keeps rsqrt finite (and its gradient defined) in the branch that torch.where drops
    return torch.where(square > limit, error * (max_norm * torch.rsqrt(square.clamp_min(limit))), error)


def linear_memory_apply(W: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """M(z) = W z.  W [..., d, d], z [..., C, d] -> [..., C, d]"""
    return z @ W.transpose(-1, -2)


def mlp_memory_inner_grad_autograd(W1, W2, k, target):
    """Reference: ∇_{W1,W2} ½‖M(k) − target‖² by autograd, with the target held constant. Tests only."""
    W1 = W1.detach().requires_grad_(True)
    W2 = W2.detach().requires_grad_(True)
    out, _, _ = mlp_memory_apply(W1, W2, k)
    loss = 0.5 * ((out - target.detach()) ** 2).sum()
    return torch.autograd.grad(loss, (W1, W2))
