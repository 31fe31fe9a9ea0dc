"""The compiled steps (Execution(compile=True): the SR-Titans chunk step, and the CMS step, the dual form over a
few whole blocks) compute what the eager path does, in the outputs and in every gradient:
torch.compile's AOTAutograd derives its own backward, so it must be checked the way the chunked path is
checked against the reference."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from hopelab.config import ModelConfig
from hopelab.models import Execution, build_model, fast_memory_layers
from hopelab.ops import dgd
from hopelab.ops.cms import step_length

# torch's own compile stack still imports TorchScript helpers
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def _grads(model, tokens):
    model.zero_grad(set_to_none=True)
    logits = model(tokens)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.roll(-1, 1).flatten()).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_compiled_chunk_step_matches_eager_in_outputs_and_every_gradient():
    cfg = ModelConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, chunk_size=4, cms_periods=(16,), context_len=64)
    torch.manual_seed(0)
    eager = build_model("hope", cfg)
    compiled = build_model("hope", cfg, execution=Execution(compile=True))
    compiled.load_state_dict(eager.state_dict())
    assert len(fast_memory_layers(compiled)) == 2  # the SR-Titans layer and the CMS level
    # SR-Titans: 13 full chunks (compiled), a short last one (eager). CMS: one full step of 2 blocks (compiled)
    # from the initial state, then a tail of one complete block and a partial one (eager)
    tokens = torch.randint(0, 64, (3, 54), generator=torch.Generator().manual_seed(1))
    assert step_length(16) == 32
    before = counters["stats"]["unique_graphs"]  # process-wide: other tests trace graphs too
    out_e, grads_e = _grads(eager, tokens)
    dgd._MASKS.clear()  # as in a fresh process: the compiled step is the first to ask for the causal masks
    out_c, grads_c = _grads(compiled, tokens)
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-5)
    assert grads_c.keys() == grads_e.keys()
    assert any("init_W1" in n for n in grads_e)  # the meta-learned initial states are among them
    for name, g in grads_e.items():
        scale = g.abs().max().clamp_min(1e-6)
        err = (grads_c[name] - g).abs().max() / scale
        assert err < 1e-3, f"{name}: relative gradient error {err:.2e}"
    graphs = counters["stats"]["unique_graphs"]
    assert graphs - before == 2  # both steps ran compiled, each one whole graph (no graph breaks), each compiled once
    with torch.no_grad():  # inference runs eager: same numbers, and no second graph compiled for it
        torch.testing.assert_close(compiled(tokens), out_e, rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == graphs


def _tiny_run(tmp_path, name: str, settings: dict | None = None, **spec_kw):
    """A 4-step hope run (1 layer, context 32) on a small word corpus -> (its RunSpec, its RunState, its train
    losses by step). `settings`: --set overrides; `spec_kw`: how it executes (compile=, cudagraphs=, ...)."""
    import random

    import pyarrow.parquet as pq

    from hopelab.run import RunSpec, parse_overrides, train_one

    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        rng = random.Random(0)
        words = "the of and to in a is that for it as was with be by on not he this are or his from at".split()
        corpus.write_text("\n\n".join(" ".join(rng.choice(words) for _ in range(60)) for _ in range(30)))
    settings = {"dim": 16, "n_layers": 1, "n_heads": 2, "chunk_size": 4, "cms_periods": "8", "context_len": 32,
                "vocab_size": 300, "batch_size": 3, "ckpt_every": 2, "val_batches": 1, **(settings or {})}
    model_over, train_over = parse_overrides([f"{k}={v}" for k, v in settings.items()])
    spec = RunSpec(variant="hope", scale="tiny", steps=4, data=str(corpus), out=str(tmp_path / name),
                   model_overrides=model_over, train_overrides=train_over, accelerator="cpu", **spec_kw)
    result = train_one(spec, progress=lambda *a: None, cache_dir=str(tmp_path / "cache"))
    assert result.status == "done", result.reason
    m = pq.read_table(spec.run_dir / "metrics.parquet").to_pandas()
    return spec, result, m[m.metric == "train_loss"].sort_values("step").value.to_numpy()


@pytest.mark.slow
def test_a_compiled_training_run_follows_the_eager_one(tmp_path):
    """`hopelab train --compile`: the same losses step by step as the eager run, probes and all, and the
    manifest says how many layers ran compiled."""
    import json

    losses = {}
    for compiled in (False, True):
        spec, _, losses[compiled] = _tiny_run(tmp_path, f"c{compiled}", compile=compiled)
        manifest = json.loads((spec.run_dir / "manifest.json").read_text())
        assert manifest["hardware"]["compiled_modules"] == (2 if compiled else 0)
        assert manifest["probe_errors"] is None  # every probe ran (the intervene probe's switches too)
        assert (spec.run_dir / "probes" / "intervene-step000004.parquet").exists()
    assert len(losses[True]) == 4
    assert abs(losses[True] - losses[False]).max() < 1e-4 * abs(losses[False]).max(), losses
    # --compile changes how a run executes, not what it computes: the finished eager run is the same run
    # (a partial one would resume from its checkpoint), so asking for it compiled trains nothing more
    spec, result, _ = _tiny_run(tmp_path, "cFalse", compile=True)
    assert result.status == "done" and result.last_step == 4
    assert len(json.loads((spec.run_dir / "manifest.json").read_text())["attempts"]) == 1


@pytest.mark.slow
def test_a_compiled_streamed_run_follows_the_eager_one(tmp_path):
    """`--compile` with `segments=2`: the state carried between windows (a CMS level of period 48 ends each
    window inside a block, so its partial block gradients are carried) gives the eager losses step by step."""
    settings = {"segments": 2, "cms_periods": "8,48"}
    losses = {c: _tiny_run(tmp_path, f"s{c}", settings, compile=c)[2] for c in (False, True)}
    assert len(losses[True]) == 4
    assert abs(losses[True] - losses[False]).max() < 1e-4 * abs(losses[False]).max(), losses


@pytest.mark.slow
def test_a_cudagraphs_run_trains_through_the_compiled_forward(tmp_path, monkeypatch):
    """`hopelab train --cudagraphs` on CPU, with the CUDA check lifted and the whole-model compile run by
    aot_eager (hopelab.models.cudagraphs): every training step goes through it, with the eager run's losses, and
    the manifest says so."""
    import json

    from hopelab.models.cudagraphs import compile_whole
    from hopelab.run import training

    calls = []

    def counted(model):
        forward = compile_whole(model, mode=None, backend="aot_eager")
        return lambda tokens: calls.append(tokens.shape) or forward(tokens)

    monkeypatch.setattr(training, "check_cudagraphs", lambda *a: None)
    monkeypatch.setattr(training, "compile_whole", counted)
    losses = {}
    for graphs in (False, True):
        spec, _, losses[graphs] = _tiny_run(tmp_path, f"g{graphs}", cudagraphs=graphs, probes=False)
        assert json.loads((spec.run_dir / "manifest.json").read_text())["hardware"]["cudagraphs"] is graphs
    assert len(calls) == 4  # the four training steps; validation and the final evaluation run eager
    assert abs(losses[True] - losses[False]).max() < 1e-4 * abs(losses[False]).max(), losses
