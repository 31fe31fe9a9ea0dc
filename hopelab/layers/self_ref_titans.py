"""Self-referential Titans (Eq 83-93): the in-context memory of HOPE.

Per block input x_t (after the block's pre-norm and a short causal depthwise conv, window 4):

    q̃_t = x_t W_q                                   the only static projection
    k_t = M_k(x_t),  v_t = M_v(x_t),  q_t = M_q(q̃_t)  (k, v and q L2-normalised per head)
    η_t = η_max σ(⟨r_η, M_η(x_t)⟩ + b_η),  α_t = σ(⟨r_α, M_α(x_t)⟩ + b_α)    per token, per head
    v̂_□,t = M_□(v_t)                                each memory generates its own value (Eq 83)
    M_□ ← M_□ (α_t I − η_t k_t k_tᵀ) − η_t ∇L(M_□; k_t, v̂_□,t)   for □ ∈ {k, v, q, η, α, memory} (Eq 88)
    o_t = M_memory(q_t)

Choices written down:
- The paper lists M_q among the memories but gives q_t = x_t W_q; we read it as q_t = M_q(x_t W_q), so the
  static projection feeds the adaptive query memory and M_q really participates.
- Chunk-wise (Eq 90): within a chunk of C tokens, projections, self-generated values and inner gradients use
  the chunk-start state; the read o_t includes the writes of tokens s ≤ t of the same chunk, never s > t.
- MLP memory M(z) = z + W1 σ(W2 z) (Eq 89): the DGD factor (α I − η k kᵀ) acts on W2, the weight that
  multiplies the key; α decays W1. Linear memory M(z) = W z: Eq 93 exactly.
- k, q and v are L2-normalised per head (Hope, Section 8.3 normalises q and k; the DGD closed form Eq 57
  assumes normalised inputs). Normalising v too bounds the self-generated values v̂ = M(v): without it the
  loop v -> v̂ -> update of M_v -> v grows without bound within a few chunks.
- η_t and α_t are per token and per head, shared by the six memories as in Eq 88.
- The surprise gate (hopelab.ops.surprise) scales each token's write.
- One fast state per sample: the meta-learned initial states (parameters) are expanded over the batch and
  every update is per sample. Gradients reach the initial states through every in-sequence update.
- chunk_grad="mean" (default): a chunk is one DGD step of size η on the mean of its C token losses, as in
  TTT's mini-batch GD: every token's write (gradient and preconditioner alike) uses η_t/C. "sum" is Eq 90
  literally: C coherent gradient steps taken at one state, which diverges once C·η_t grows (at C = 16,
  T = 512, untrained: NaN for η ≥ 0.5).
- Huber inner loss (`inner_error_clip`, default 3): each written error e_t is capped at that norm
  (hopelab.ops.memory.huber_error); the surprise is still the L2 loss. Without it, chunk-start gradients can run
  away on a repetitive stream (README, "Stability"); below the cap the update is Eq 88 exactly.
- inner_grad="full" differentiates through the inner gradients (second-order terms). Since the inner
  gradients are closed-form rather than autograd calls, that costs little more than first order.
  "first_order" treats the inner-loss error signals (e, all of δ, σ(W2 k)) as constants, as first-order MAML
  does; the definition shared by every layer is in hopelab.ops.memory ("First order"). M_v, whose only role is
  to make targets, then gets no gradient at all.
- Read index: o_t = M_memory,t(q_t) reads the state *after* token t's own write, where Eq 83/94 print
  M_memory,t−1(q_t). Both are causal (the write at t uses only tokens ≤ t); reading after the write lets a token
  retrieve what it just stored, as DeltaNet and the chunked Titans do, and makes the chunk's reads one masked
  product (hopelab.ops.dgd, `dgd_read`).
- DGD fixed point: Eq 88 combines the L2 inner gradient (M k − v̂) kᵀ with the (α I − η k kᵀ) factor, so the
  M k kᵀ term is counted twice: writing the same (k, v̂) again and again with α = 1 converges to M k = v̂/2, not
  v̂ (the plain delta rule, without the factor, converges to v̂). Eq 88/93 as printed; see hopelab.ops.dgd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hopelab.config import ModelConfig
from hopelab.layers.conv import CausalConv
from hopelab.layers.fast_memory import (
    DEFAULT_EXECUTION,
    Execution,
    FastMemory,
    Record,
    init_projection,
    logit,
    residual_std,
)
from hopelab.layers.hooks import HookPoint
from hopelab.ops.dgd import (
    dgd_linear_memory_chunk,
    dgd_linear_memory_chunk_reference,
    dgd_mlp_memory_chunk,
    dgd_mlp_memory_chunk_reference,
)
from hopelab.ops.memory import act, huber_error, linear_memory_apply, mlp_memory_inner_grad
from hopelab.ops.surprise import surprise_from_error, surprise_gate

# the memories read x (k, v, η, α) come first, so one contiguous block of the stacked state serves them
COMPONENTS = ("k", "v", "eta", "alpha", "q", "memory")
X_READERS = 4  # k, v, η, α: the memories applied to x_t
# what each chunk step observes, in the order it returns them (for the hook points)
OBSERVED = ("k", "v", "q", "eta", "alpha", "surprise", "gate")


@dataclass
class SelfRefTitansState:
    """Where a self-referential Titans layer stands in a sequence; carried across calls when streaming."""

    # the fast weights of all memories, stacked per sample and head so that the weights that multiply the
    # (shared) key stack the M memories along their output rows and each DGD step is one batched product:
    #   MLP:    (W1 [B, H, M, d, h],  W2 [B, H, M·h, d])   (the W2 rows of memory m: m·h … (m+1)·h − 1)
    #   linear: (W [B, H, M·d, d],)
    weights: tuple[torch.Tensor, ...]
    surprise_stats: torch.Tensor  # [B, 3] running (count, sum, sum of squares) of surprise (hopelab.ops.surprise)
    conv: torch.Tensor  # [B, w − 1, D] the conv's last inputs
    pos: int  # tokens consumed


class SelfReferentialTitans(FastMemory):
    def __init__(self, cfg: ModelConfig, execution: Execution = DEFAULT_EXECUTION) -> None:
        super().__init__(execution)
        D, H, d = cfg.dim, cfg.n_heads, cfg.head_dim
        self.cfg = cfg
        self.n_heads, self.head_dim = H, d
        self.chunk_tokens = cfg.chunk_size
        self.components = COMPONENTS if cfg.selfmod else ("memory",)
        M = len(self.components)
        self.conv = CausalConv(D, cfg.conv_window)
        self.W_q = nn.Linear(D, D, bias=False)
        if cfg.memory == "mlp":
            hid = d * cfg.memory_hidden_mult
            # meta-learned initial states, one per memory and head
            self.init_W1 = nn.Parameter(torch.randn(M, H, d, hid) / math.sqrt(hid))  # [M, H, d, h]
            self.init_W2 = nn.Parameter(torch.randn(M, H, hid, d) / math.sqrt(d))  # [M, H, h, d]
        else:
            eye = torch.eye(d).expand(M, H, d, d)
            self.init_W = nn.Parameter(eye + torch.randn(M, H, d, d) / math.sqrt(d))  # [M, H, d, d]
        eta_bias = logit(cfg.eta_init / cfg.eta_max)
        alpha_bias = logit(min(cfg.alpha_init, 1 - 1e-4))
        if cfg.selfmod:
            self.eta_readout = nn.Parameter(torch.randn(H, d) * 0.1)  # r_η
            self.eta_bias = nn.Parameter(torch.full((H,), eta_bias))
            self.alpha_readout = nn.Parameter(torch.randn(H, d) * 0.1)  # r_α
            self.alpha_bias = nn.Parameter(torch.full((H,), alpha_bias))
        else:  # hope_no_selfmod: static projections; η and α start near their typical values
            self.W_k = nn.Linear(D, D, bias=False)
            self.W_v = nn.Linear(D, D, bias=False)
            self.W_eta = nn.Linear(D, H)
            self.W_alpha = nn.Linear(D, H)
            with torch.no_grad():
                self.W_eta.weight.mul_(0.1)
                self.W_eta.bias.fill_(eta_bias)
                self.W_alpha.weight.mul_(0.1)
                self.W_alpha.bias.fill_(alpha_bias)
        self.out_norm = nn.LayerNorm(D)
        self.W_o = nn.Linear(D, D, bias=False)
        # observed inside the chunk steps, emitted after the chunk loop (observation only)
        self.hook_k = HookPoint()  # [B, T, D]   k_t
        self.hook_v = HookPoint()  # [B, T, D]   v_t
        self.hook_q = HookPoint()  # [B, T, D]   q_t
        self.hook_eta = HookPoint()  # [B, T, H]   η_t, before the surprise gate
        self.hook_alpha = HookPoint()  # [B, T, H]   α_t, before the surprise gate
        self.hook_surprise = HookPoint()  # [B, T]   M_memory's inner loss at the chunk-start state
        self.hook_gate = HookPoint()  # [B, T]   the surprise gate, 0 or 1
        self.hook_out = HookPoint()  # [B, T, D]   the layer's output

    def reset_parameters(self) -> None:
        """GPT-2's init of the static projections (W_o writes into the residual stream). The memories' initial
        states, the conv and the η, α producers keep the init they were given where they were made; the LM
        calls this once every module exists, so a seed draws the same numbers."""
        for lin in (self.W_q, *((self.W_k, self.W_v) if not self.cfg.selfmod else ())):
            init_projection(lin)
        init_projection(self.W_o, residual_std(self.cfg.n_layers))

    # ----------------------------------------------------------------------------------------------
    def initial_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """{component: {"W1": [H, d, h], "W2": [H, h, d]}} (or {"W": [H, d, d]}): views of the parameters."""
        out = {}
        for m, comp in enumerate(self.components):
            if self.cfg.memory == "mlp":
                out[comp] = {"W1": self.init_W1[m], "W2": self.init_W2[m]}
            else:
                out[comp] = {"W": self.init_W[m]}
        return out

    def initial_state(self, batch: int) -> SelfRefTitansState:
        # one contiguous copy per sample: every chunk step sees the same layout (one compiled graph for all)
        if self.cfg.memory == "mlp":
            M, H, h, d = self.init_W2.shape
            W2 = self.init_W2.permute(1, 0, 2, 3).reshape(H, M * h, d)  # [H, M·h, d]
            W1 = self.init_W1.permute(1, 0, 2, 3)  # [H, M, d, h]
            weights = (W1, W2)
        else:
            M, H, d, _ = self.init_W.shape
            weights = (self.init_W.permute(1, 0, 2, 3).reshape(H, M * d, d),)  # [H, M·d, d]
        weights = tuple(W.expand(batch, *W.shape).contiguous() for W in weights)
        stats = self.W_q.weight.new_zeros(batch, 3)
        return SelfRefTitansState(weights, stats, self.conv.initial_tail(batch), pos=0)

    def reset_carry(self, carry):
        weights, stats = carry
        # the surprise statistics are in-context state too: with relative gating they remember earlier tokens
        return self.initial_state(weights[0].shape[0]).weights, torch.zeros_like(stats)

    def fast_states(self, carry) -> dict[str, dict[str, torch.Tensor]]:
        """Each memory's fast weights in the parameter layout ([B, H, d, h], [B, H, h, d] or [B, H, d, d])."""
        weights, _ = carry
        M = len(self.components)
        out = {}
        for m, comp in enumerate(self.components):
            if self.cfg.memory == "mlp":
                W1, W2 = weights
                B, H, Mh, d = W2.shape
                out[comp] = {"W1": W1[:, :, m], "W2": W2.view(B, H, M, Mh // M, d)[:, :, m]}
            else:
                (W,) = weights
                B, H, _, d = W.shape
                out[comp] = {"W": W.view(B, H, M, d, d)[:, :, m]}
        return out

    def _groups(self, weights: tuple) -> dict[str, tuple]:
        """The fast weights split into the groups of memories read together: "x" (k, v, η, α), "q", "memory".
        One split per chunk: its backward concatenates once, where a slice per use would zero-fill a
        full-size gradient each."""
        sizes = [X_READERS, 1, 1] if self.cfg.selfmod else [1]
        names = ["x", "q", "memory"] if self.cfg.selfmod else ["memory"]
        if self.cfg.memory == "linear":
            (W,) = weights
            d = W.shape[-1]
            return {g: (Wg,) for g, Wg in zip(names, W.split([m * d for m in sizes], dim=2))}
        W1, W2 = weights
        h = W1.shape[-1]
        W1s, W2s = W1.split(sizes, dim=2), W2.split([m * h for m in sizes], dim=2)
        return {g: (W1g, W2g) for g, W1g, W2g in zip(names, W1s, W2s)}

    def _memories_on(self, weights: tuple, z: torch.Tensor):
        """Every memory of the (stacked) `weights` on the same inputs z [B, H, n, d] ->
        (out [B, H, m, n, d], pre [B, H, m, n, h] | None, hidden [B, H, m, n, h] | None,
         pre_rows [B, H, n, m·h] | None: pre in the stacked-row layout, i.e. S_0 k for the W2 update)."""
        B, H, n, d = z.shape
        if self.cfg.memory == "linear":
            (W,) = weights
            count = W.shape[-2] // d
            out = linear_memory_apply(W, z).view(B, H, n, count, d).transpose(2, 3)  # M(z) = W z
            return out, None, None, None
        W1, W2 = weights
        count, h = W1.shape[2], W1.shape[-1]
        pre_rows = linear_memory_apply(W2, z)  # [B, H, n, m·h]  W2 z
        pre = pre_rows.view(B, H, n, count, h).transpose(2, 3).contiguous()  # [B, H, m, n, h]
        hidden = act(pre)
        out = z.unsqueeze(2) + hidden @ W1.transpose(-1, -2)  # [B, H, m, n, d]  z + W1 σ(W2 z)
        return out, pre, hidden, pre_rows

    def _rates(self, eta_feat, alpha_feat):
        """Per-token, per-head η_t ∈ (0, η_max) and log α_t, α_t ∈ (0, 1).  feats [B, H, n, d] -> [B, H, n]"""
        eta_logit = (eta_feat * self.eta_readout[:, None, :]).sum(-1) + self.eta_bias[:, None]
        alpha_logit = (alpha_feat * self.alpha_readout[:, None, :]).sum(-1) + self.alpha_bias[:, None]
        return self.cfg.eta_max * torch.sigmoid(eta_logit), F.logsigmoid(alpha_logit)

    # ----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, state: SelfRefTitansState | None = None):
        """x [B, T, D] -> (out [B, T, D], the state after it)."""
        cfg = self.cfg
        B, T, D = x.shape
        H, d, C = self.n_heads, self.head_dim, cfg.chunk_size
        state = state if state is not None else self.initial_state(B)
        xc, conv_tail = self.conv(x, state.conv)  # [B, T, D]

        def heads(t: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, H, T, d]
            return t.view(B, T, H, d).transpose(1, 2)

        # contiguous: the conv's output is a transposed view, and a compiled chunk step given chunks of it
        # returned wrong input gradients (torch 2.13, CPU; caught by tests/test_compile.py)
        xh = heads(xc.contiguous())  # [B, H, T, d]
        qh = heads(self.W_q(xc))  # [B, H, T, d]   q̃ = x W_q
        # per-chunk views by split, not slicing: backward concatenates once instead of zero-filling a
        # full-size gradient per chunk
        x_chunks, q_chunks = xh.split(C, dim=2), qh.split(C, dim=2)  # [B, H, n, d] each
        if cfg.selfmod:
            statics = [None] * len(x_chunks)
        else:  # static projections, computed for the whole sequence at once
            k_all = F.normalize(heads(self.W_k(xc)), dim=-1)
            v_all = F.normalize(heads(self.W_v(xc)), dim=-1)
            q_all = F.normalize(qh, dim=-1)
            eta_all = cfg.eta_max * torch.sigmoid(self.W_eta(xc)).transpose(1, 2)  # [B, H, T]
            log_alpha_all = F.logsigmoid(self.W_alpha(xc)).transpose(1, 2)  # [B, H, T]
            statics = list(zip(*(t.split(C, dim=2) for t in (k_all, v_all, q_all, eta_all, log_alpha_all))))
        # the running surprise statistics take the dtype the surprise arrives in (bf16 under autocast)
        stats = state.surprise_stats.to(xh.dtype)
        chunks = [(xc_.shape[2], (xc_, qc_, st_)) for xc_, qc_, st_ in zip(x_chunks, q_chunks, statics)]
        outs, (weights, stats) = self.run_chunks((state.weights, stats), chunks, state.pos)
        o = torch.cat([o for o, _ in outs], dim=2).transpose(1, 2).reshape(B, T, D)  # [B, T, D]
        self._emit_observed([seen for _, seen in outs], B, T, D)
        out = self.hook_out(self.W_o(self.out_norm(o)))
        return out, SelfRefTitansState(weights, stats, conv_tail, state.pos + T)

    def step(self, carry, x_c, q_c, static, record: Record | None = None):
        """One chunk of C tokens (Eq 90): projections, self-generated values and inner gradients at the
        chunk-start state, then the DGD writes (Eq 88) and M_memory's causal reads.
        carry: (the stacked fast weights, the surprise statistics); x_c, q_c [B, H, n, d]; static: (k, v, q, η,
        log α) of this chunk when not self-modifying, else None.
        -> ((o [B, H, n, d], what the chunk observed: OBSERVED), the carry at the chunk end)"""
        cfg = self.cfg
        C = cfg.chunk_size
        weights, stats = carry
        groups = self._groups(weights)
        if static is None:
            # projections with the chunk-start state: M_k, M_v, M_η, M_α on x, M_q on q̃
            proj, _, _, _ = self._memories_on(groups["x"], x_c)  # [B, H, 4, n, d]
            k_raw, v_raw, eta_feat, alpha_feat = proj.unbind(2)  # [B, H, n, d] each
            k = F.normalize(k_raw, dim=-1)  # k_t = M_k(x_t)
            v = F.normalize(v_raw, dim=-1)  # v_t = M_v(x_t)
            q = F.normalize(self._memories_on(groups["q"], q_c)[0].squeeze(2), dim=-1)  # q_t = M_q(x_t W_q)
            eta, log_alpha = self._rates(eta_feat, alpha_feat)  # [B, H, n]
            # self-generated values v̂_□ = M_□(v) (Eq 83) and inner errors e_□ = M_□(k) − v̂_□
            v_hat = self._memories_on(weights, v)[0]  # [B, H, M, n, d]
        else:
            k, v, q, eta, log_alpha = static
            v_hat = v.unsqueeze(2)  # v̂ = v
        mk, pre_k, hidden_k, S0k = self._memories_on(weights, k)  # [B, H, M, n, d]; W2 k, σ(W2 k) [B, H, M, n, h]
        error = mk - v_hat  # [B, H, M, n, d]
        surprise = surprise_from_error(error[:, :, -1].detach())  # [B, n]   M_memory's inner loss
        gate, stats = surprise_gate(surprise, cfg.surprise_mode, cfg.surprise_threshold, stats)
        intervention = self.execution.intervention
        if intervention.gate != "learned":  # forced open (every token writes) or closed (none does)
            gate = torch.full_like(gate, 1.0 if intervention.gate == "open" else 0.0)
        error = huber_error(error, cfg.inner_error_clip)  # the written error; the surprise stays the L2 loss
        eta_w = eta * gate[:, None, :]  # [B, H, n]   gated η
        log_alpha_w = log_alpha * gate[:, None, :]  # [B, H, n]   a closed gate: no write, no decay
        if cfg.chunk_grad == "mean":  # one DGD step of size η on the chunk's mean loss: η_t/C per token
            eta_w = eta_w / C
        first_order = cfg.inner_grad == "first_order"  # what is detached: hopelab.ops.memory, "First order"
        if first_order:
            error = error.detach()
            hidden_k = hidden_k.detach() if hidden_k is not None else None
        reference = self.execution.impl == "reference"
        if cfg.memory == "mlp":
            W1, W2 = weights
            delta = mlp_memory_inner_grad(W1, pre_k, error)  # [B, H, M, n, h]  ∇W2 = δ kᵀ
            if first_order:  # all of δ = σ'(W2 k) ⊙ (W1ᵀ e), the W1 that multiplies e included
                delta = delta.detach()
            args = (W1, W2, k, q, hidden_k, error, delta, eta_w, log_alpha_w)
            if reference:
                o, W1, W2 = dgd_mlp_memory_chunk_reference(*args)
            else:  # the read memory's weights: views of this chunk's split
                o, W1, W2 = dgd_mlp_memory_chunk(*args, S0k=S0k, read_weights=(groups["memory"][0].squeeze(2),
                                                                              groups["memory"][1]))
            weights = (W1, W2)  # o_t = M_memory,t(q_t) = q_t + W1_t σ(W2_t q_t)
        else:
            (W,) = weights
            args = (W, k, q, error, eta_w, log_alpha_w)
            if reference:
                o, W = dgd_linear_memory_chunk_reference(*args)
            else:
                o, W = dgd_linear_memory_chunk(*args, read_weight=groups["memory"][0])
            weights = (W,)  # o_t = W_memory,t q_t
        frozen = [intervention.freezes(c) for c in self.components]
        if any(frozen):  # frozen memories keep their chunk-start (= initial) weights and are read there
            weights = self._keep_frozen(frozen, carry[0], weights)
            if frozen[-1]:  # M_memory (the last component): o_t = M_memory,0(q_t)
                o = self._memories_on(groups["memory"], q)[0].squeeze(2)
        carry = (weights, stats)
        if record is not None and x_c.shape[2] == C:
            record(C, carry)
        return (o, (k, v, q, eta, log_alpha, surprise, gate)), carry

    def _keep_frozen(self, frozen: list[bool], start: tuple, end: tuple) -> tuple:
        """The stacked weights at the chunk end, with the rows of the `frozen` memories (one flag per component)
        taken from the chunk start: the memories are independent row blocks of the stacked state."""
        keep = torch.tensor(frozen, device=start[0].device)  # [M]
        if self.cfg.memory == "linear":
            rows = keep.repeat_interleave(start[0].shape[-1])[:, None]  # [M·d, 1]
            return (torch.where(rows, start[0], end[0]),)
        (W1_0, W2_0), (W1, W2) = start, end
        rows = keep.repeat_interleave(W1.shape[-1])[:, None]  # [M·h, 1]
        return torch.where(keep[:, None, None], W1_0, W1), torch.where(rows, W2_0, W2)

    def _emit_observed(self, seen: list[tuple], B: int, T: int, D: int) -> None:
        """Call the hook points of what the chunk steps observed (OBSERVED), for those with hooks attached."""
        for i, name in enumerate(OBSERVED):
            hook = getattr(self, f"hook_{name}")
            if not hook.has_hooks:
                continue
            if name in ("surprise", "gate"):
                hook(torch.cat([s[i] for s in seen], dim=1))  # [B, T]
                continue
            t = torch.cat([s[i].exp() if name == "alpha" else s[i] for s in seen], dim=2)  # [B, H, T(, d)]
            hook(t.transpose(1, 2).reshape(B, T, D) if name in ("k", "v", "q") else t.transpose(1, 2))
