"""`hopelab audit`: a gradient-flow and memory audit of any HOPE / Titans / fast-weight implementation.

    from hopelab.audit import audit
    report = audit(model, vocab=64, seq_len=64, batch=2)   # never modifies `model`
    report.findings, report.verdict, report.exit_code, report.to_json(), report.to_markdown(), report.render()

How it is built, in the order an audit runs:

  target.py   how a model it has never seen is loaded, called and scored (factory, call, default loss)
  inputs.py   what it is fed: one input or named ones, and the steps of the sequence axis
  context.py  the options, the model copies and the forward / loss / gradient every pass shares
  passes/     a few forwards that measure (gradients, op tracing, perturbation sweeps, finite differences)
  checks/     one module per check, reading the measurements; `CHECKS` lists them in report order
  report.py   findings, check results, the gradient-flow table and their renderings
  names.py, tracing.py   the name heuristics and the ForwardTracer the passes use

Default loss: see hopelab.audit.target (cross-entropy of output[:, :-1] vs x[:, 1:] for tokens, MSE for float).
"""

_LAZY = {  # imported on first use, so `hopelab --help` does not pay for torch
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


__all__ = ["audit", "AuditReport", "Finding", "CheckResult", "FlowRow", "CHECKS"]
