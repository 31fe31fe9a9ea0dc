"""What keeps the GPU path fast, checked on CPU: a training step of every variant makes no host synchronisation,
creates nothing on a device other than its parameters', and the whole forward traces as one graph. These make the
whole step capturable as CUDA graphs (`--cudagraphs`, hopelab.models.cudagraphs), whose compiled model must
compute what the eager one does. The tests marked `cuda` run where a GPU is (`make gpu-check`)."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hopelab.config import ModelConfig
from hopelab.models import VARIANTS, build_model
from hopelab.models.cudagraphs import compile_whole

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

# 1 layer, context 32: two SR-Titans chunks and both CMS periods' steps, where compiling the whole model is fast
CFG = ModelConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, chunk_size=16, cms_periods=(8, 16), context_len=32)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# ops that copy a device value to the host (or whose output shape depends on one): each stalls the GPU's queue
# and ends a CUDA graph capture. nn.Embedding's backward does so on CUDA once a batch holds over 3072 tokens
# (hopelab.layers.embedding)
SYNC_OPS = {"aten._local_scalar_dense", "aten.item", "aten.nonzero", "aten.nonzero_static", "aten.equal",
            "aten.is_nonzero", "aten.masked_select", "aten._unique2", "aten.unique_dim", "aten.unique_consecutive",
            "aten.repeat_interleave.Tensor", "aten.allclose", "aten.embedding_dense_backward"}


class OpAudit(TorchDispatchMode):
    """Every op run inside: the host-syncing ones, and those with a tensor input or output not on `device` (an
    input from the host is a copy to the device, which waits for the host, e.g. torch.tensor(x, device=...))."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device, self.syncs, self.elsewhere = device, [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket._qualified_op_name).replace("::", ".")
        if name in SYNC_OPS or str(func).removesuffix(".default") in SYNC_OPS:
            self.syncs.append(str(func))
        self.elsewhere += [str(func) for t in tree_leaves((out, args, kwargs)) if isinstance(t, torch.Tensor)
                           and t.device.type != self.device.type]
        return out


class HostData(TorchFunctionMode):
    """Calls that build a tensor from host data (on a GPU: a copy from the host, which waits for it), which
    dispatch does not see: torch.tensor(x, device=...) is made on the host and copied below the dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.tensor, torch.as_tensor, torch.from_numpy):
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _loss(forward, tokens):
    logits = forward(tokens)  # [B, T, V]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.roll(-1, 1).flatten()), logits


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_training_step_makes_no_host_sync_and_stays_on_the_parameters_device(variant):
    """On CPU, counting the syncing ops and the tensors built from host data; on the meta device, where every op
    must have a device-independent kernel and a tensor made on the CPU by mistake (a torch.zeros without device=)
    shows as an op off the device. Each after a warm-up step, which may build what later steps reuse (the causal
    masks)."""
    torch.manual_seed(0)
    model = build_model(variant, CFG)
    tokens = torch.randint(0, CFG.vocab_size, (2, CFG.context_len), generator=torch.Generator().manual_seed(0))
    _loss(model, tokens)[0].backward()
    with OpAudit(torch.device("cpu")) as audit, HostData() as host:
        _loss(model, tokens)[0].backward()
    assert audit.syncs == [], f"{variant}: host syncs {sorted(set(audit.syncs))}"
    assert host.calls == [], f"{variant}: tensors built from host data in a step: {host.calls}"
    meta, tokens = build_model(variant, CFG).to("meta"), tokens.to("meta")
    _loss(meta, tokens)[0].backward()
    with OpAudit(torch.device("meta")) as audit:
        _loss(meta, tokens)[0].backward()
    assert audit.elsewhere == [], f"{variant}: ops off the parameters' device {set(audit.elsewhere)}"
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in meta.parameters() if p.requires_grad)


def test_the_op_audit_sees_a_sync_and_a_stray_device():
    """The guard itself: an .item() and a tensor made on the CPU inside a meta computation are both caught."""
    x = torch.ones(3, device="meta")
    with OpAudit(torch.device("meta")) as audit:
        y = x + torch.ones(3).sum()  # a CPU scalar: allowed by torch, flagged here
    assert y.device.type == "meta" and audit.elsewhere
    with OpAudit(torch.device("cpu")) as audit:
        torch.ones(3).sum().item()
        torch.ones(3).nonzero()
    assert len(audit.syncs) == 2
    with HostData() as host:
        torch.tensor(0.0) + 1
    assert host.calls == ["tensor"]


@pytest.mark.parametrize("variant", ["hope", "hope_attention", "titans", "transformer"])
def test_the_whole_forward_traces_as_one_graph(variant):
    """torch._dynamo.explain: one graph, no graph break (a break splits a CUDA graph capture and re-enters
    Python between the pieces). The other HOPE variants switch mechanisms off within the same code."""
    torch.manual_seed(0)
    model = build_model(variant, CFG)
    tokens = torch.randint(0, CFG.vocab_size, (2, CFG.context_len))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(tokens)
    reasons = [r.reason.splitlines()[0] for r in explained.break_reasons]
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), reasons


@pytest.mark.slow
def test_the_whole_model_compiled_matches_eager_in_outputs_and_every_gradient():
    """compile_whole as --cudagraphs calls it, the whole model one graph with the backward AOTAutograd derives
    for it, run by the aot_eager backend (inductor's code generation for this graph takes minutes on CPU; the
    chunk steps' inductor kernels are checked in tests/test_compile.py, and the inductor + CUDA graph path in
    test_cudagraphs_replay_matches_eager_over_steps on a GPU): the same logits and every parameter's gradient,
    over two steps with an update between."""
    torch.manual_seed(0)
    eager = build_model("hope", CFG)
    twin = build_model("hope", CFG)
    twin.load_state_dict(eager.state_dict())
    forward = compile_whole(twin, mode=None, backend="aot_eager")
    gen = torch.Generator().manual_seed(1)
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]  # process-wide: other tests compile too
    for _ in range(2):  # the second call reuses the graph, with the updated weights
        tokens = torch.randint(0, CFG.vocab_size, (3, CFG.context_len), generator=gen)
        out = {}
        for name, model, fwd in (("eager", eager, eager), ("compiled", twin, forward)):
            model.zero_grad(set_to_none=True)
            loss, logits = _loss(fwd, tokens)
            loss.backward()
            out[name] = logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.testing.assert_close(out["compiled"][0], out["eager"][0], rtol=1e-4, atol=1e-5)
        grads_e, grads_c = out["eager"][1], out["compiled"][1]
        assert grads_c.keys() == grads_e.keys() and any("init_W1" in n for n in grads_e)
        for name, g in grads_e.items():
            err = (grads_c[name] - g).abs().max() / g.abs().max().clamp_min(1e-6)
            assert err < 1e-3, f"{name}: relative gradient error {err:.2e}"
        with torch.no_grad():  # a plain update, the same on both
            for p, q in zip(eager.parameters(), twin.parameters()):
                p -= 0.1 * p.grad
                q -= 0.1 * q.grad
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1  # one graph, compiled once


def test_cudagraphs_is_refused_without_cuda(monkeypatch):
    from typer.testing import CliRunner

    from hopelab.cli import app
    from hopelab.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for args in (["train", "--variant", "hope", "--cudagraphs"], ["study", "run", "ablation", "--cudagraphs"],
                 ["bench", "--variants", "hope", "--cudagraphs"], ["bench", "--variants", "hope+cudagraphs"]):
        result = CliRunner().invoke(app, args)
        assert isinstance(result.exception, UserError), (args, result.output)
        assert "--cudagraphs" in str(result.exception) and "CUDA" in str(result.exception)
        assert "\n" not in str(result.exception)


# ------------------------------------------------------------------------------------------- on a GPU only
@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("variant", ["hope", "transformer"])
def test_cuda_step_makes_no_host_sync(variant):
    """torch's own CUDA sync detector: any op that synchronises inside a step raises. 4096 tokens, as a `small`
    batch holds (nn.Embedding's backward would sync from 3073)."""
    torch.manual_seed(0)
    model = build_model(variant, CFG).cuda()
    tokens = torch.randint(0, CFG.vocab_size, (128, CFG.context_len), device="cuda")
    _loss(model, tokens)[0].backward()  # warm-up: one-off setup (e.g. cached masks) may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _loss(model, tokens)[0].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda
@pytest.mark.cuda
def test_cudagraphs_replay_matches_eager_over_steps():
    """compile_whole as --cudagraphs runs it (mode reduce-overhead): logits and gradients equal eager's over three
    AdamW steps, the graphs replayed with new tokens and updated weights."""
    torch.manual_seed(0)
    eager = build_model("hope", CFG).cuda()
    twin = build_model("hope", CFG).cuda()
    twin.load_state_dict(eager.state_dict())
    forward = compile_whole(twin)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (eager, twin)]
    for step in range(3):
        tokens = torch.randint(0, CFG.vocab_size, (3, CFG.context_len), device="cuda")
        losses = []
        for fwd in (eager, forward):
            loss, _ = _loss(fwd, tokens)
            loss.backward()
            losses.append(loss.detach().clone())
        for (n, p), q in zip(eager.named_parameters(), twin.parameters()):
            if p.grad is not None:
                err = (q.grad - p.grad).abs().max() / p.grad.abs().max().clamp_min(1e-6)
                assert err < 2e-3, f"step {step}, {n}: relative gradient error {err:.2e}"
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)


@cuda
@pytest.mark.cuda
def test_captured_step_matches_eager():
    """capture_whole (the bench's +captured): the eager graphs replayed give eager's loss and gradients."""
    from hopelab.models.cudagraphs import capture_whole

    torch.manual_seed(0)
    eager = build_model("hope", CFG).cuda()
    twin = build_model("hope", CFG).cuda()
    twin.load_state_dict(eager.state_dict())
    tokens = torch.randint(0, CFG.vocab_size, (3, CFG.context_len), device="cuda")
    forward = capture_whole(twin, tokens.clone())
    for model in (eager, twin):
        model.zero_grad(set_to_none=True)
    tokens = torch.randint(0, CFG.vocab_size, (3, CFG.context_len), device="cuda")  # new tokens, same buffers
    loss_e, loss_c = _loss(eager, tokens)[0], _loss(forward, tokens)[0]
    (loss_e + loss_c).backward()
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-4, atol=1e-5)
    for (n, p), q in zip(eager.named_parameters(), twin.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=n)

