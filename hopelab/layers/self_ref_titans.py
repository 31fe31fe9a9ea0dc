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
  literally: C coherent gradient steps taken at one state, which diverges once C·η_t grows (measured at
  C = 16, T = 512, untrained: NaN for η ≥ 0.5).
- inner_grad="full" differentiates through the inner gradients (second-order terms). Since the inner
  gradients are closed-form rather than autograd calls, that is cheap: a tiny hope fwd+bwd measured 1.18x
  the first-order one (median of 5, 1 thread). "first_order" treats the inner-loss error signals
  (e, δ, σ(W2 k)) as constants, as first-order MAML does; M_v, whose only role is to make targets, then
  gets no gradient at all.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hopelab.config import ModelConfig
from hopelab.layers.hooks import HookPoint
from hopelab.layers.recompute import call_step
from hopelab.ops.dgd import chunk_decay, dgd_chunk_factors, dgd_chunk_reference, dgd_end_state, dgd_read
from hopelab.ops.memory import act, linear_memory_apply, mlp_memory_inner_grad
from hopelab.ops.surprise import surprise_from_error, surprise_gate

# the memories read x (k, v, η, α) come first, so one contiguous block of the stacked state serves them
COMPONENTS = ("k", "v", "eta", "alpha", "q", "memory")
X_READERS = 4  # k, v, η, α: the memories applied to x_t


class CausalConv(nn.Module):
    """Depthwise causal conv over time; carries its last (window − 1) inputs for streaming."""

    def __init__(self, dim: int, window: int) -> None:
        super().__init__()
        self.window = window
        self.conv = nn.Conv1d(dim, dim, kernel_size=window, groups=dim, bias=True)
        with torch.no_grad():  # start near the identity: the newest token dominates
            self.conv.weight.zero_()
            self.conv.weight[:, 0, -1] = 1.0
            self.conv.weight.add_(torch.randn_like(self.conv.weight) * 0.02)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor, tail: torch.Tensor | None):
        B, T, D = x.shape
        if tail is None:
            tail = x.new_zeros(B, self.window - 1, D)
        xp = torch.cat([tail, x], dim=1)  # [B, w-1+T, D]
        y = self.conv(xp.transpose(1, 2)).transpose(1, 2)  # [B, T, D]
        return y, xp[:, -(self.window - 1) :] if self.window > 1 else tail


def _hooked(hp: HookPoint) -> bool:
    return bool(hp._forward_hooks)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class SelfReferentialTitans(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D, H, d = cfg.dim, cfg.n_heads, cfg.head_dim
        self.cfg = cfg
        self.n_heads, self.head_dim = H, d
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
        eta_bias = _logit(cfg.eta_init / cfg.eta_max)
        alpha_bias = _logit(min(cfg.alpha_init, 1 - 1e-4))
        if cfg.selfmod:
            self.eta_readout = nn.Parameter(torch.randn(H, d) * 0.1)  # r_η
            self.eta_bias = nn.Parameter(torch.full((H,), eta_bias))
            self.alpha_readout = nn.Parameter(torch.randn(H, d) * 0.1)  # r_α
            self.alpha_bias = nn.Parameter(torch.full((H,), alpha_bias))
        else:  # hope_no_selfmod: static projections
            self.W_k = nn.Linear(D, D, bias=False)
            self.W_v = nn.Linear(D, D, bias=False)
            self.W_eta = nn.Linear(D, H)
            self.W_alpha = nn.Linear(D, H)
            self.W_eta._keep_init = self.W_alpha._keep_init = True
            with torch.no_grad():
                self.W_eta.weight.mul_(0.1)
                self.W_eta.bias.fill_(eta_bias)
                self.W_alpha.weight.mul_(0.1)
                self.W_alpha.bias.fill_(alpha_bias)
        self.out_norm = nn.LayerNorm(D)
        self.W_o = nn.Linear(D, D, bias=False)
        for name in ("k", "v", "q", "eta", "alpha", "surprise", "gate", "out"):
            setattr(self, f"hook_{name}", HookPoint())
        self.impl = "chunked"  # or "reference": token-by-token Eq 88 inside each chunk (tests)
        self.compiled_chunk = None  # torch.compile(self._chunk), set by hopelab.models.compile_chunks
        self.recompute = False  # keep only each chunk's inputs for backward (hopelab.models.recompute_chunks)
        self._trace = None  # set by hopelab.models.trace_fast_states: fn(component, position, states)

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

    # Internal fast-state layout, per sample and head, chosen so that the weights that multiply the (shared)
    # key stack the M memories along their output rows and each DGD step is one batched product:
    #   "W2": [B, H, M·h, d]   (MLP; the rows of memory m are m·h … (m+1)·h − 1)   or  "W": [B, H, M·d, d]
    #   "W1": [B, H, M, d, h]  (MLP only; its keys σ(W2 k) differ per memory)
    def _initial_fast_state(self, B: int) -> dict[str, torch.Tensor]:
        if self.cfg.memory == "mlp":
            M, H, h, d = self.init_W2.shape
            W2 = self.init_W2.permute(1, 0, 2, 3).reshape(H, M * h, d)  # [H, M·h, d]
            W1 = self.init_W1.permute(1, 0, 2, 3)  # [H, M, d, h]
            return {"W1": W1.expand(B, *W1.shape), "W2": W2.expand(B, *W2.shape)}
        M, H, d, _ = self.init_W.shape
        W = self.init_W.permute(1, 0, 2, 3).reshape(H, M * d, d)  # [H, M·d, d]
        return {"W": W.expand(B, *W.shape)}

    def _per_memory(self, mem: dict, m: int) -> dict[str, torch.Tensor]:
        """Memory m's fast state in the parameter layout ([B, H, d, h], [B, H, h, d] or [B, H, d, d])."""
        M = len(self.components)
        if self.cfg.memory == "mlp":
            B, H, Mh, d = mem["W2"].shape
            return {"W1": mem["W1"][:, :, m], "W2": mem["W2"].view(B, H, M, Mh // M, d)[:, :, m]}
        B, H, Md, d = mem["W"].shape
        return {"W": mem["W"].view(B, H, M, d, d)[:, :, m]}

    def _groups(self, mem: dict) -> dict[str, dict[str, torch.Tensor]]:
        """The fast state split into the groups of memories read together: "x" (k, v, η, α), "q", "memory".
        One split per chunk: its backward concatenates once, where a slice per use would zero-fill a
        full-size gradient each."""
        sizes = [X_READERS, 1, 1] if self.cfg.selfmod else [1]
        names = ["x", "q", "memory"] if self.cfg.selfmod else ["memory"]
        if self.cfg.memory == "linear":
            d = mem["W"].shape[-1]
            return {g: {"W": W} for g, W in zip(names, mem["W"].split([m * d for m in sizes], dim=2))}
        h = mem["W1"].shape[-1]
        W1s, W2s = mem["W1"].split(sizes, dim=2), mem["W2"].split([m * h for m in sizes], dim=2)
        return {g: {"W1": W1, "W2": W2} for g, W1, W2 in zip(names, W1s, W2s)}

    def _memories_on(self, mem: dict, z: torch.Tensor):
        """Every memory of the (stacked) state `mem` on the same inputs z [B, H, n, d] ->
        (out [B, H, m, n, d], pre [B, H, m, n, h] | None, hidden [B, H, m, n, h] | None,
         pre_rows [B, H, n, m·h] | None: pre in the stacked-row layout, i.e. S_0 k for the W2 update)."""
        B, H, n, d = z.shape
        if self.cfg.memory == "linear":
            count = mem["W"].shape[-2] // d
            out = linear_memory_apply(mem["W"], z).view(B, H, n, count, d).transpose(2, 3)  # M(z) = W z
            return out, None, None, None
        count, h = mem["W1"].shape[2], mem["W1"].shape[-1]
        pre_rows = linear_memory_apply(mem["W2"], z)  # [B, H, n, m·h]  W2 z
        pre = pre_rows.view(B, H, n, count, h).transpose(2, 3).contiguous()  # [B, H, m, n, h]
        hidden = act(pre)
        out = z.unsqueeze(2) + hidden @ mem["W1"].transpose(-1, -2)  # [B, H, m, n, d]  z + W1 σ(W2 z)
        return out, pre, hidden, pre_rows

    def _rates(self, eta_feat, alpha_feat):
        """Per-token, per-head η_t ∈ (0, η_max) and log α_t, α_t ∈ (0, 1).  feats [B, H, n, d] -> [B, H, n]"""
        eta_logit = (eta_feat * self.eta_readout[:, None, :]).sum(-1) + self.eta_bias[:, None]
        alpha_logit = (alpha_feat * self.alpha_readout[:, None, :]).sum(-1) + self.alpha_bias[:, None]
        return self.cfg.eta_max * torch.sigmoid(eta_logit), F.logsigmoid(alpha_logit)

    # ----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, state: dict | None = None):
        """x [B, T, D] -> (out [B, T, D], new state)."""
        cfg = self.cfg
        B, T, D = x.shape
        H, d, C = self.n_heads, self.head_dim, cfg.chunk_size
        state = state or {}
        xc, conv_tail = self.conv(x, state.get("conv"))  # [B, T, D]
        heads = lambda t: t.view(B, T, H, d).transpose(1, 2)  # noqa: E731  [B, T, D] -> [B, H, T, d]
        # contiguous: the conv's output is a transposed view, and a compiled chunk step given chunks of it
        # returned wrong input gradients (torch 2.13, CPU; caught by tests/test_compile.py)
        xh = heads(xc.contiguous())  # [B, H, T, d]
        qh = heads(self.W_q(xc))  # [B, H, T, d]   q̃ = x W_q
        if not cfg.selfmod:  # static projections, computed for the whole sequence at once
            k_all = F.normalize(heads(self.W_k(xc)), dim=-1)
            v_all = F.normalize(heads(self.W_v(xc)), dim=-1)
            q_all = F.normalize(qh, dim=-1)
            eta_all = cfg.eta_max * torch.sigmoid(self.W_eta(xc)).transpose(1, 2)  # [B, H, T]
            log_alpha_all = F.logsigmoid(self.W_alpha(xc)).transpose(1, 2)  # [B, H, T]
        # every chunk step gets the same input layout (a compiled step is traced once, not per layout)
        mem = state["mem"] if "mem" in state else {k: t.contiguous() for k, t in self._initial_fast_state(B).items()}
        stats = state.get("surprise_stats")
        if stats is None:
            stats = xh.new_zeros(B, 3)  # running surprise statistics (hopelab.ops.surprise)
        pos0 = state.get("pos", 0)
        keep = {n: _hooked(getattr(self, f"hook_{n}")) for n in ("k", "v", "q", "eta", "alpha", "surprise", "gate")}
        rec = {n: [] for n in keep}
        outs = []
        # per-chunk views by split, not slicing: backward concatenates once instead of zero-filling a
        # full-size gradient per chunk
        x_chunks, q_chunks = xh.split(C, dim=2), qh.split(C, dim=2)  # [B, H, n, d] each
        if not cfg.selfmod:
            static_chunks = list(zip(*(t.split(C, dim=2) for t in (k_all, v_all, q_all, eta_all, log_alpha_all))))
        # the compiled step serves full chunks of a training step; a short last chunk and inference run eager
        # (each would be one more compiled graph)
        compiled = self.compiled_chunk is not None and self.impl == "chunked" and torch.is_grad_enabled()
        for c, start in enumerate(range(0, T, C)):
            n = x_chunks[c].shape[2]
            end = start + n
            static = None if cfg.selfmod else static_chunks[c]
            chunk_step = self.compiled_chunk if compiled and n == C else self._chunk
            o, mem, seen, stats = call_step(chunk_step, self.recompute, mem, x_chunks[c], q_chunks[c], static, stats)
            outs.append(o)  # [B, H, n, d]
            if self._trace is not None and n == C:
                for m, comp in enumerate(self.components):
                    self._trace(comp, pos0 + end, {k_: t.detach() for k_, t in self._per_memory(mem, m).items()})
            for name, t in zip(("k", "v", "q", "eta", "alpha", "surprise", "gate"), seen):
                if keep[name]:
                    rec[name].append(t.exp() if name == "alpha" else t)
        o = torch.cat(outs, dim=2).transpose(1, 2).reshape(B, T, D)  # [B, T, D]
        if any(keep.values()):
            self._emit_hooks(rec, keep, B, T, D)
        out = self.hook_out(self.W_o(self.out_norm(o)))
        new_state = {"mem": mem, "conv": conv_tail, "surprise_stats": stats, "pos": pos0 + T}
        return out, new_state

    def _chunk(self, mem, x_c, q_c, static, stats):
        """One chunk of C tokens (Eq 90): projections, self-generated values and inner gradients at the
        chunk-start state `mem`, then the DGD writes (Eq 88) and M_memory's causal reads.
        x_c, q_c [B, H, n, d]; static: (k, v, q, η, log α) of this chunk when not self-modifying, else None.
        -> (o [B, H, n, d], chunk-end state, (k, v, q, η, log α, surprise, gate), surprise stats)"""
        cfg = self.cfg
        C = cfg.chunk_size
        groups = self._groups(mem)
        if static is None:
            # projections with the chunk-start state: M_k, M_v, M_η, M_α on x, M_q on q̃
            proj, _, _, _ = self._memories_on(groups["x"], x_c)  # [B, H, 4, n, d]
            k_raw, v_raw, eta_feat, alpha_feat = proj.unbind(2)  # [B, H, n, d] each
            k = F.normalize(k_raw, dim=-1)  # k_t = M_k(x_t)
            v = F.normalize(v_raw, dim=-1)  # v_t = M_v(x_t)
            q = F.normalize(self._memories_on(groups["q"], q_c)[0].squeeze(2), dim=-1)  # q_t = M_q(x_t W_q)
            eta, log_alpha = self._rates(eta_feat, alpha_feat)  # [B, H, n]
            # self-generated values v̂_□ = M_□(v) (Eq 83) and inner errors e_□ = M_□(k) − v̂_□
            v_hat = self._memories_on(mem, v)[0]  # [B, H, M, n, d]
        else:
            k, v, q, eta, log_alpha = static
            v_hat = v.unsqueeze(2)  # v̂ = v
        mk, pre_k, hidden_k, S0k = self._memories_on(mem, k)  # [B, H, M, n, d]; W2 k, σ(W2 k) [B, H, M, n, h]
        error = mk - v_hat  # [B, H, M, n, d]
        surprise = surprise_from_error(error[:, :, -1].detach())  # [B, n]   M_memory's inner loss
        gate, stats = surprise_gate(surprise, cfg.surprise_mode, cfg.surprise_threshold, stats)
        eta_w = eta * gate[:, None, :]  # [B, H, n]   gated η
        log_alpha_w = log_alpha * gate[:, None, :]  # [B, H, n]   a closed gate: no write, no decay
        if cfg.chunk_grad == "mean":  # one DGD step of size η on the chunk's mean loss: η_t/C per token
            eta_w = eta_w / C
        if cfg.inner_grad == "first_order":
            error = error.detach()
            pre_k = pre_k.detach() if pre_k is not None else None
            hidden_k = hidden_k.detach() if hidden_k is not None else None
        if cfg.memory == "mlp":
            delta = mlp_memory_inner_grad(mem["W1"], pre_k, error)  # [B, H, M, n, h]  ∇W2 = δ kᵀ
            read, mem = self._update_mlp(mem, groups["memory"], k, q, error, delta, hidden_k, S0k, eta_w, log_alpha_w)
            o = q + read  # o_t = M_memory,t(q_t) = q_t + W1_t σ(W2_t q_t)
        else:
            read, mem = self._update_linear(mem, groups["memory"], k, q, error, eta_w, log_alpha_w)
            o = read  # o_t = W_memory,t q_t
        return o, mem, (k, v, q, eta, log_alpha, surprise, gate), stats

    @staticmethod
    def _stack_rows(t: torch.Tensor) -> torch.Tensor:
        """[B, H, M, n, r] -> [B, H, n, M·r]: per-memory gradient factors as rows of the stacked weight."""
        B, H, M, n, r = t.shape
        return t.transpose(2, 3).reshape(B, H, n, M * r)

    def _update_mlp(self, mem, reader, keys, query, error, delta, hidden_k, S0k, eta_w, log_alpha_w):
        W1, W2 = mem["W1"], mem["W2"]  # [B, H, M, d, h], [B, H, M·h, d]
        h = W1.shape[-1]
        g2 = self._stack_rows(delta)  # [B, H, n, M·h]
        if self.impl == "reference":
            # W2 ← W2 (α I − η k kᵀ) − η δ kᵀ ; W1 ← α W1 − η e uᵀ, token by token (Eq 88)
            reads2, W2_end = dgd_chunk_reference(W2, keys, g2, eta_w, log_alpha_w, query, precondition=True)
            p = reads2[..., -h:].unsqueeze(2)  # [B, H, 1, n, h]   W2_t q_t of M_memory
            reads1, W1_end = dgd_chunk_reference(
                W1, hidden_k, error, eta_w.unsqueeze(2), log_alpha_w.unsqueeze(2), act(p), precondition=False
            )
            return reads1[:, :, -1], {"W1": W1_end, "W2": W2_end}
        decay = chunk_decay(log_alpha_w)  # [B, H, ...], shared by both weights of all memories
        w2 = dgd_chunk_factors(W2, keys, g2, eta_w, decay, precondition=True, S0k=S0k)  # [B, H, n, M·h]
        w1 = dgd_chunk_factors(W1, hidden_k, error, eta_w.unsqueeze(2), decay.unsqueeze(2), precondition=False)
        # reads only for M_memory (the last memory): p_t = W2_t q_t, then W1_t σ(p_t)
        p = dgd_read(reader["W2"], w2[..., -h:], keys, decay, query)  # [B, H, n, h]
        read = dgd_read(reader["W1"].squeeze(2), w1[:, :, -1], hidden_k[:, :, -1], decay, act(p))  # [B, H, n, d]
        new = {"W1": dgd_end_state(W1, w1, hidden_k, decay.unsqueeze(2)), "W2": dgd_end_state(W2, w2, keys, decay)}
        return read, new

    def _update_linear(self, mem, reader, keys, query, error, eta_w, log_alpha_w):
        W = mem["W"]  # [B, H, M·d, d]; ∇W L = e kᵀ (Eq 93)
        d = W.shape[-1]
        g = self._stack_rows(error)  # [B, H, n, M·d]
        if self.impl == "reference":
            reads, W_end = dgd_chunk_reference(W, keys, g, eta_w, log_alpha_w, query, precondition=True)
            return reads[..., -d:], {"W": W_end}
        decay = chunk_decay(log_alpha_w)
        w = dgd_chunk_factors(W, keys, g, eta_w, decay, precondition=True)
        read = dgd_read(reader["W"], w[..., -d:], keys, decay, query)  # [B, H, n, d]
        return read, {"W": dgd_end_state(W, w, keys, decay)}

    def _emit_hooks(self, rec, keep, B, T, D):
        for name in ("k", "v", "q"):
            if keep[name]:
                getattr(self, f"hook_{name}")(torch.cat(rec[name], dim=2).transpose(1, 2).reshape(B, T, D))
        for name in ("eta", "alpha"):
            if keep[name]:
                getattr(self, f"hook_{name}")(torch.cat(rec[name], dim=2).transpose(1, 2))  # [B, T, H]
        for name in ("surprise", "gate"):
            if keep[name]:
                getattr(self, f"hook_{name}")(torch.cat(rec[name], dim=1))  # [B, T]
