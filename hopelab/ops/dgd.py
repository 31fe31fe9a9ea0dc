"""Delta Gradient Descent within one chunk (Eq 57, 88, 90, 93), fast and reference.

For every token t of a chunk, with S_0 the chunk-start state,

    S_t = S_{t-1} (α_t I − λ_t k_t k_tᵀ) − η_t g_t k_tᵀ          (Eq 88; Eq 93 for a linear memory)
    read_t = S_t q_t

where g_t k_tᵀ = ∇L_t(S_0) is the inner-loss gradient taken at the chunk-start state (Eq 90: gradients
w.r.t. the chunk-start state, so all of them are computed in parallel), λ_t = η_t for the weight that
multiplies the key (the DGD preconditioner), and λ_t = 0 for a weight that only decays.

Fixed point: with the L2 inner gradient g_t k_tᵀ = (S k_t − v̂_t) k_tᵀ (Eq 93), the update counts the S k kᵀ
term twice, once in the preconditioner and once in the gradient. For a unit key and α = 1,
    S_t k = S_{t-1} k − η S_{t-1} k − η (S_{t-1} k − v̂) = (1 − 2η) S_{t-1} k + η v̂,
so writing the same (k, v̂) again and again converges to S k = v̂/2, not v̂; the plain delta rule (λ = 0)
converges to v̂. We keep Eq 88/93 as printed: Eq 57's update form, S (I − η k kᵀ) − η ∇_y L ⊗ k, with the L2
inner error (S k − v̂) in the place of ∇_y L. (Solving Eq 56 with v̂ itself as the regression target gives
S (I − η' k kᵀ) + η' v̂ kᵀ, η' = η/(1 + η), whose fixed point is S k = v̂.) Pinned by
tests/test_mechanisms.py::test_dgd_fixed_point_is_half_the_value.

Causality: read_t includes the writes of tokens s ≤ t of the chunk and never s > t. Eq 90 as written
indexes the state at C⌈t/C⌉, the chunk *end*; taken literally that leaks future tokens into earlier reads.

Fast path (WY form, as in chunked DeltaNet): with γ_t = Π_{r≤t} α_r,

    S_t = γ_t S_0 + Σ_{s≤t} (γ_t/γ_s) w_s k_sᵀ
    w_t = −λ_t S_{t-1} k_t − η_t g_t
        = −λ_t γ_{t-1} S_0 k_t − η_t g_t − λ_t Σ_{s<t} (γ_{t-1}/γ_s)(k_sᵀ k_t) w_s

i.e. a unit lower-triangular C×C solve per (sample, head), then reads and the chunk-end state are masked
matrix products. Shapes carry leading batch dims `...` that broadcast (keys may be shared by memories).

The memory updates of self-referential Titans (`dgd_mlp_memory_chunk`, `dgd_linear_memory_chunk`) are built
from these pieces; each has its token-by-token reference beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from hopelab.ops.memory import act

_MASKS: dict = {}


def causal_log_masks(C: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive masks [C, C]: 0 where s < t (strict) / s ≤ t (inclusive), -inf elsewhere. Cached when eager;
    under torch.compile built in the graph (constants to the compiler): a cache lookup there is a guard that
    fails once the trace has filled the cache, and compiled every chunk step a second time."""
    if torch.compiler.is_compiling():
        return _build_causal_log_masks(C, like)
    key = (C, like.device, like.dtype)
    if key not in _MASKS:
        _MASKS[key] = _build_causal_log_masks(C, like)
    return _MASKS[key]


def _build_causal_log_masks(C: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ones = torch.ones(C, C, dtype=torch.bool, device=like.device)
    neg = torch.tensor(float("-inf"), dtype=like.dtype, device=like.device)
    zero = torch.tensor(0.0, dtype=like.dtype, device=like.device)
    return torch.where(ones.tril(-1), zero, neg), torch.where(ones.tril(0), zero, neg)


def _log_ratio_matrix(log_gamma_row: torch.Tensor, log_gamma_col: torch.Tensor, strict: bool) -> torch.Tensor:
    """exp(row_t − col_s) on the causal mask (s < t if strict else s ≤ t), 0 elsewhere. -> [..., C, C]"""
    diff = log_gamma_row.unsqueeze(-1) - log_gamma_col.unsqueeze(-2)  # [..., C, C]
    strict_mask, inclusive_mask = causal_log_masks(diff.shape[-1], diff)
    # exp(x + (-inf)) = 0 with zero gradient: masked entries (maybe large positive x) never overflow
    return torch.exp(diff + (strict_mask if strict else inclusive_mask))


@dataclass
class ChunkDecay:
    """Everything the decays α_t of one chunk contribute, computed once and shared by every weight."""

    inclusive: torch.Tensor  # [..., C, C]    γ_t/γ_s for s ≤ t, else 0
    strict: torch.Tensor  # [..., C, C]       γ_{t-1}/γ_s for s < t, else 0
    gamma: torch.Tensor  # [..., C]           γ_t = Π_{r≤t} α_r
    gamma_prev: torch.Tensor  # [..., C]      γ_{t-1}

    def unsqueeze(self, dim: int) -> ChunkDecay:
        """Insert a broadcast batch dim (e.g. over memories) at `dim` (a leading dim, counted from 0)."""
        return ChunkDecay(*(getattr(self, f.name).unsqueeze(dim) for f in fields(self)))


def chunk_decay(log_alpha: torch.Tensor) -> ChunkDecay:
    log_gamma = torch.cumsum(log_alpha, dim=-1)  # [..., C]
    inclusive = _log_ratio_matrix(log_gamma, log_gamma, strict=False)  # γ_t/γ_s
    log_gamma_prev = log_gamma - log_alpha  # [..., C]
    strict = _log_ratio_matrix(log_gamma_prev, log_gamma, strict=True)  # γ_{t-1}/γ_s
    return ChunkDecay(inclusive, strict, torch.exp(log_gamma), torch.exp(log_gamma_prev))


def dgd_chunk_factors(
    S0: torch.Tensor,  # [..., out, in]   chunk-start state
    keys: torch.Tensor,  # [..., C, in]
    grads: torch.Tensor,  # [..., C, out]   g_t, with ∇L_t(S_0) = g_t k_tᵀ
    eta: torch.Tensor,  # [..., C]        η_t (already gated)
    decay: ChunkDecay,  # of the (gated) α_t
    precondition: bool = True,  # λ_t = η_t (DGD) or 0 (decay only)
    S0k: torch.Tensor | None = None,  # [..., C, out]  S_0 k_t, when the caller already has it
) -> torch.Tensor:
    """The WY vectors w [..., C, out] that, with the decays, represent every S_t of the chunk."""
    w = -eta.unsqueeze(-1) * grads  # [..., C, out]  right-hand side without the preconditioner
    if precondition:
        if S0k is None:
            S0k = keys @ S0.transpose(-1, -2)  # [..., C, out]  S_0 k_t
        w = w - (eta * decay.gamma_prev).unsqueeze(-1) * S0k
        kk = keys @ keys.transpose(-1, -2)  # [..., C, C]    k_tᵀ k_s
        lower = eta.unsqueeze(-1) * decay.strict * kk  # [..., C, C]  strictly lower; unit diagonal implied
        # in float32 at least: under bf16/fp16 autocast the factors arrive in half precision, which the solve
        # neither supports (CPU or CUDA) nor should (the solve compounds rounding over the C tokens)
        dtype = torch.promote_types(w.dtype, torch.float32)
        w = unit_lower_inverse(lower.to(dtype)) @ w.to(dtype)  # [..., C, out]
    return w


def unit_lower_inverse(lower: torch.Tensor) -> torch.Tensor:
    """(I + L)⁻¹ for strictly lower-triangular L [..., C, C] (its diagonal is ignored: unit diagonal implied).
    Solving against the C columns of the identity, then one matmul, is cheaper than solving against the
    out = M·h right-hand sides directly, since C < M·h."""
    eye = torch.eye(lower.shape[-1], dtype=lower.dtype, device=lower.device).expand(lower.shape)
    return torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)  # [..., C, C]


def dgd_read(S0, w, keys, decay: ChunkDecay, queries) -> torch.Tensor:
    """read_t = S_t q_t = γ_t S_0 q_t + Σ_{s≤t} (γ_t/γ_s) (k_sᵀ q_t) w_s.  -> [..., C, out]"""
    scores = decay.inclusive * (queries @ keys.transpose(-1, -2))  # [..., C, C]
    return torch.addcmul(scores @ w, decay.gamma.unsqueeze(-1), queries @ S0.transpose(-1, -2))


def dgd_end_state(S0, w, keys, decay: ChunkDecay) -> torch.Tensor:
    """S_C = γ_C S_0 + Σ_s (γ_C/γ_s) w_s k_sᵀ.  -> [..., out, in]"""
    to_end = decay.inclusive[..., -1, :]  # [..., C]   γ_C/γ_s
    gamma_end = decay.gamma[..., -1, None, None]  # [..., 1, 1]
    return torch.addcmul((to_end.unsqueeze(-1) * w).transpose(-1, -2) @ keys, gamma_end, S0)


def dgd_chunk_reference(S0, keys, grads, eta, log_alpha, queries=None, precondition=True):
    """Token by token, Eq 88 literally: S ← S (α I − λ k kᵀ) − η g kᵀ; read_t = S_t q_t."""
    C = keys.shape[-2]
    n_in = keys.shape[-1]
    eye = torch.eye(n_in, dtype=keys.dtype, device=keys.device)
    S = S0
    reads = []
    for t in range(C):
        k = keys[..., t, :]  # [..., in]
        g = grads[..., t, :]  # [..., out]
        et = eta[..., t, None, None]  # [..., 1, 1]
        at = torch.exp(log_alpha[..., t])[..., None, None]  # [..., 1, 1]
        kkT = k.unsqueeze(-1) * k.unsqueeze(-2)  # [..., in, in]
        transition = at * eye - (et * kkT if precondition else 0.0)  # α_t I − λ_t k_t k_tᵀ
        S = S @ transition - et * (g.unsqueeze(-1) * k.unsqueeze(-2))  # Eq 88
        if queries is not None:
            reads.append((S @ queries[..., t, :].unsqueeze(-1)).squeeze(-1))  # S_t q_t
    return (torch.stack(reads, dim=-2) if queries is not None else None), S


# ---------------------------------------------------------------------------------------------------------
# the memory updates of self-referential Titans: M memories, stacked, written by DGD; the last one is read


def _stack_rows(t: torch.Tensor) -> torch.Tensor:
    """[..., M, n, r] -> [..., n, M·r]: per-memory gradient factors as rows of the stacked weight."""
    *lead, M, n, r = t.shape
    return t.transpose(-3, -2).reshape(*lead, n, M * r)


def dgd_mlp_memory_chunk(W1, W2, keys, queries, hidden, error, delta, eta, log_alpha, S0k=None, read_weights=None):
    """One chunk of M stacked MLP memories M(z) = z + W1 σ(W2 z) (Eq 89), each written by DGD (Eq 88) with
    its own inner gradient: the preconditioner (α I − η k kᵀ) acts on W2, the weight that multiplies the key;
    α only decays W1, whose keys are σ(W2 k). The last memory is read at the queries.

        W1 [..., M, d, h]        chunk-start W1 of each memory
        W2 [..., M·h, d]         chunk-start W2, the memories stacked along rows (memory m: rows m·h … (m+1)·h − 1)
        keys, queries [..., n, d]
        hidden [..., M, n, h]    u_t = σ(W2 k_t): the keys of W1
        error [..., M, n, d]     e_t = M(k_t) − v̂_t,   ∇_{W1} L_t = e_t u_tᵀ
        delta [..., M, n, h]     δ_t,                   ∇_{W2} L_t = δ_t k_tᵀ
        eta, log_alpha [..., n]  η_t and log α_t, shared by the memories
        S0k [..., n, M·h]        W2 k_t, when the caller already has it
        read_weights             (W1 [..., d, h], W2 [..., h, d]) of the last memory, when the caller has them
                                 as views of its own split of the state (backward then concatenates once)

    -> (M_t(q_t) of the last memory [..., n, d], W1 [..., M, d, h] and W2 [..., M·h, d] at the chunk end)
    """
    h = W1.shape[-1]
    lead = keys.dim() - 2  # the memory axis of W1, hidden, error, delta
    decay = chunk_decay(log_alpha)  # shared by both weights of all memories
    w2 = dgd_chunk_factors(W2, keys, _stack_rows(delta), eta, decay, precondition=True, S0k=S0k)  # [..., n, M·h]
    w1 = dgd_chunk_factors(W1, hidden, error, eta.unsqueeze(-2), decay.unsqueeze(lead), precondition=False)
    read_W1, read_W2 = read_weights if read_weights is not None else (W1[..., -1, :, :], W2[..., -h:, :])
    p = dgd_read(read_W2, w2[..., -h:], keys, decay, queries)  # [..., n, h]   p_t = W2_t q_t
    read = dgd_read(read_W1, w1[..., -1, :, :], hidden[..., -1, :, :], decay, act(p))  # [..., n, d]  W1_t σ(p_t)
    W1_end = dgd_end_state(W1, w1, hidden, decay.unsqueeze(lead))
    return queries + read, W1_end, dgd_end_state(W2, w2, keys, decay)


def dgd_mlp_memory_chunk_reference(W1, W2, keys, queries, hidden, error, delta, eta, log_alpha):
    """Token by token (Eq 88): W2 ← W2 (α I − η k kᵀ) − η δ kᵀ;  W1 ← α W1 − η e uᵀ."""
    h = W1.shape[-1]
    reads2, W2_end = dgd_chunk_reference(W2, keys, _stack_rows(delta), eta, log_alpha, queries, precondition=True)
    p = reads2[..., -h:].unsqueeze(-3)  # [..., 1, n, h]   W2_t q_t of the last memory
    reads1, W1_end = dgd_chunk_reference(
        W1, hidden, error, eta.unsqueeze(-2), log_alpha.unsqueeze(-2), act(p), precondition=False
    )
    return queries + reads1[..., -1, :, :], W1_end, W2_end


def dgd_linear_memory_chunk(W, keys, queries, error, eta, log_alpha, read_weight=None):
    """One chunk of M stacked linear memories M(z) = W z, each written by DGD (Eq 93: ∇_W L_t = e_t k_tᵀ);
    the last memory is read at the queries.

        W [..., M·d, d]          chunk-start state, the memories stacked along rows
        keys, queries [..., n, d];  error [..., M, n, d];  eta, log_alpha [..., n]
        read_weight [..., d, d]  the last memory's W, when the caller has it as a view of its own split

    -> (W_t q_t of the last memory [..., n, d], W at the chunk end [..., M·d, d])
    """
    d = W.shape[-1]
    decay = chunk_decay(log_alpha)
    w = dgd_chunk_factors(W, keys, _stack_rows(error), eta, decay, precondition=True)  # [..., n, M·d]
    read = dgd_read(W[..., -d:, :] if read_weight is None else read_weight, w[..., -d:], keys, decay, queries)
    return read, dgd_end_state(W, w, keys, decay)


def dgd_linear_memory_chunk_reference(W, keys, queries, error, eta, log_alpha):
    """Token by token (Eq 93): W ← W (α I − η k kᵀ) − η e kᵀ."""
    d = W.shape[-1]
    reads, W_end = dgd_chunk_reference(W, keys, _stack_rows(error), eta, log_alpha, queries, precondition=True)
    return reads[..., -d:], W_end
