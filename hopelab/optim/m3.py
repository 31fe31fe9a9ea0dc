"""M3, Multi-scale Momentum Muon (Nested Learning, Algorithm 1): the CMS applied to optimizer state. A fast
momentum updated every step and a slow momentum updated every f steps, each orthogonalised by Newton–Schulz,
their sum divided by an Adam-like second moment:

    every f steps (k ≥ 1):  M2 ← M2 + β3 Σ_{last f steps} g_i        O2 ← NewtonSchulz_T(M2)
    every step:             M1 ← M1 + β1 g       V ← V + β2 g²       O1 ← NewtonSchulz_T(M1)
                            θ  ← θ - η (O1 + α O2) / (√V + ε)

As in Muon, only matrix parameters take this update (the groups marked `m3=True`); the rest (norms, biases,
embeddings, meta-learned initial states) take AdamW in the same optimizer, so one lr schedule drives both.

Choices the paper leaves open, made here:
- The slow sum Σ_{i=(k-1)f}^{kf} g_i has f + 1 terms as written, overlapping the previous chunk's; we sum the f
  gradients of the previous chunk, steps (k-1)f+1 … kf, so each gradient enters M2 once. For k = 0 the sum is
  empty: M2 = 0 and O2 = NewtonSchulz(0) = 0 (the normalisation M/‖M‖ is taken as 0 for M = 0).
- The momenta and V accumulate as written (no decay; `averaging="sum"`, the default). Newton–Schulz is
  invariant to a positive scale, so β1 and β3 then have no effect on O1 and O2; β2 scales √V, i.e. the step;
  and V grows with t, so the step shrinks like 1/√t (AdaGrad-like).
- The paper's prose calls them EMAs ("EMA of gradients with β_1", "EMA of squared gradients with β_2"); that
  reading is `averaging="ema"` (`--set optimizer=m3_ema`): M1 ← β1 M1 + (1-β1) g, V ← β2 V + (1-β2) g² with
  Adam's bias correction V/(1-β2^t), and at each slow update M2 ← β3 M2 + (1-β3) Σ_chunk g. β1 and β3 then set
  how far back each momentum remembers, and the step no longer shrinks with t.
- NewtonSchulz_T is the cubic iteration Q₀ = M/‖M‖_F, Q_{i+1} = Q_i (3I - Q_iᵀQ_i)/2 (Eq 44), T = 5 steps; a
  parameter with more than two dims is orthogonalised as the matrix [shape[0], rest].
- Defaults: β1 = 0.9, β2 = 0.999, ε = 1e-8 (the paper's "typical"); β3 = 0.9, α = 1, f = 10 (the paper's
  "tuned", left for a sweep). Weight decay, when a group asks for it, is decoupled (θ ← θ(1 - ηλ)) as in AdamW.
"""

from __future__ import annotations

import torch


def newton_schulz(m: torch.Tensor, steps: int) -> torch.Tensor:
    """An approximately orthogonal matrix with m's singular vectors (Eq 44): cubic Newton–Schulz from m/‖m‖_F."""
    q = m.reshape(m.shape[0], -1)  # [rows, cols]
    q = q / q.norm().clamp_min(torch.finfo(q.dtype).tiny)  # singular values in [0, 1]: the iteration converges
    eye = torch.eye(q.shape[1], dtype=q.dtype, device=q.device)
    for _ in range(steps):
        q = q @ (3 * eye - q.T @ q) / 2  # [rows, cols]
    return q.reshape(m.shape)


class M3(torch.optim.Optimizer):
    """Algorithm 1 on the groups with `m3=True`, AdamW (`adamw_betas`) on the others."""

    def __init__(self, params, lr: float = 3e-4, betas: tuple[float, float, float] = (0.9, 0.999, 0.9),
                 alpha: float = 1.0, eps: float = 1e-8, ns_steps: int = 5, frequency: int = 10,
                 weight_decay: float = 0.0, adamw_betas: tuple[float, float] = (0.9, 0.95), m3: bool = True,
                 averaging: str = "sum") -> None:
        if frequency < 1 or ns_steps < 0 or lr < 0:
            raise ValueError(f"M3 needs frequency >= 1, ns_steps >= 0, lr >= 0; got {frequency}, {ns_steps}, {lr}")
        if averaging not in ("sum", "ema"):
            raise ValueError(f"averaging must be 'sum' (Algorithm 1 as printed) or 'ema', got {averaging!r}")
        defaults = dict(lr=lr, betas=betas, alpha=alpha, eps=eps, ns_steps=ns_steps, frequency=frequency,
                        weight_decay=weight_decay, adamw_betas=adamw_betas, m3=m3, averaging=averaging)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                (self._m3_step if group["m3"] else self._adamw_step)(p, group)
        return loss

    def _m3_step(self, p: torch.Tensor, group: dict) -> None:
        b1, b2, b3 = group["betas"]
        ema = group.get("averaging", "sum") == "ema"  # .get: a state saved before the option existed
        # what each new term is scaled by: Algorithm 1 as printed (a sum), or its prose (moving averages)
        w1, w2, w3 = (1 - b1, 1 - b2, 1 - b3) if ema else (b1, b2, b3)
        g, st = p.grad, self.state[p]
        if not st:
            st["step"] = 0
            for name in ("m1", "m2", "v", "o2", "g_sum"):  # g_sum: this chunk's gradients, for the next M2
                st[name] = torch.zeros_like(p)
        st["step"] += 1  # t
        if st["step"] > 1 and (st["step"] - 1) % group["frequency"] == 0:  # t = kf + 1, k ≥ 1: slow memory
            if ema:
                st["m2"].mul_(b3)
            st["m2"].add_(st["g_sum"], alpha=w3)
            st["o2"] = newton_schulz(st["m2"], group["ns_steps"])
            st["g_sum"].zero_()
        st["g_sum"].add_(g)
        if ema:
            st["m1"].mul_(b1)
            st["v"].mul_(b2)
        st["m1"].add_(g, alpha=w1)  # fast momentum
        st["v"].addcmul_(g, g, value=w2)  # second moment
        v = st["v"] / (1 - b2 ** st["step"]) if ema else st["v"]
        o1 = newton_schulz(st["m1"], group["ns_steps"])
        update = (o1 + group["alpha"] * st["o2"]) / (v.sqrt() + group["eps"])
        p.add_(update, alpha=-group["lr"])

    def _adamw_step(self, p: torch.Tensor, group: dict) -> None:
        b1, b2 = group["adamw_betas"]
        g, st = p.grad, self.state[p]
        if not st:
            st["step"], st["m"], st["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
        st["step"] += 1
        st["m"].lerp_(g, 1 - b1)
        st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
        m_hat = st["m"] / (1 - b1 ** st["step"])
        v_hat = st["v"] / (1 - b2 ** st["step"])
        p.addcdiv_(m_hat, v_hat.sqrt().add_(group["eps"]), value=-group["lr"])
