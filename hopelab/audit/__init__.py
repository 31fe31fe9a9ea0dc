"""`hopelab audit`: a gradient-flow and memory audit of any HOPE / Titans / fast-weight implementation.

    from hopelab.audit import audit
    report = audit(model, vocab=64, seq_len=64, batch=2)   # never modifies `model`
    report.findings, report.verdict, report.exit_code, report.to_json(), report.to_markdown(), report.render()

Nine behavioural checks, each a named finding (critical | warning | info) with its evidence:

 1 gradient flow      parameters without gradient after the next-token (or user) loss, split by finite
                      differences + op tracing into `unused_params` (info: never used) and
                      `disconnected_params` (critical: moving it changes the output, yet no gradient);
                      `detached_access` (warning) when it is read only via detach/.data and has no effect
 2 zero gradients     all-zero gradients re-checked at a randomly perturbed copy; only persistent ones are
                      findings (`zero_grad`), transient ones are `zero_grad_at_init` (info: zero-init gates)
 3 in-context grad    a loss on the last quarter of positions must reach the memory initial states and η/α
                      producers that the full loss reaches (`in_context_grad`, critical)
 4 receptive field    how far back the last output depends on the input (perturbation); less than half the
                      sequence in a memory model is `receptive_field` (critical)
 5 causality          perturbing position j (every j, or a budgeted sample inside chunks) must not change
                      outputs before j; float64, tolerance 1e-10 (`causality`, critical)
 6 batch independence perturbing sample 0 must not change sample 1 (`batch_independence`, critical)
 7 eval vs train      receptive field collapsing in eval (`eval_memory`, warning); two identical calls
                      differing (`state_across_calls`, warning)
 8 η/α collapse       η/α traced from producer modules (names, see hopelab.audit.names) to the output; a
                      reduction over the batch axis or `.item()` on the way is `eta_alpha_collapse`
                      (critical: it couples the batch's samples and drops per-token η_t); producers that
                      are constant are `eta_alpha_constant`, per-sequence ones `eta_alpha_per_sequence`
                      (warnings: learned constants are a design choice, not a correctness bug)
 9 NaN / inf          in outputs, losses and gradients (`nonfinite`, critical)

Default loss: see hopelab.audit.target (cross-entropy of output[:, :-1] vs x[:, 1:] for tokens, MSE for float).
"""

_LAZY = {  # imported on first use, so `hopelab --help` does not pay for torch
    "bench_audit": "hopelab.audit.bench",
    "CHECKS": "hopelab.audit.checks",
    "audit": "hopelab.audit.checks",
    "AuditReport": "hopelab.audit.report",
    "CheckResult": "hopelab.audit.report",
    "Finding": "hopelab.audit.report",
    "FlowRow": "hopelab.audit.report",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hopelab.audit' has no attribute {name!r}")


def register(app) -> None:
    from hopelab.audit.cli import register as _register

    _register(app)


__all__ = ["audit", "AuditReport", "Finding", "CheckResult", "FlowRow", "CHECKS", "bench_audit", "register"]
