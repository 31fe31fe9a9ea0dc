"""`hopelab bench` writes its Parquet and Markdown. No timing is asserted (no timed tests); FLOP counts are."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from hopelab.cli import app
from hopelab.config import get_scale


def test_bench_writes_parquet_and_markdown(tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        app,
        ["bench", "--scale", "tiny", "--variants", "titans", "--repeats", "1", "--no-probes", "--no-audit",
         "--no-reference", "--out", str(out), "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    df = pd.read_parquet(out / "bench-tiny.parquet")
    assert list(df.columns) == ["section", "variant", "metric", "value", "unit"]
    step = df[df.section == "train_step"]
    assert set(step.variant) == {"titans", "transformer"}  # the Transformer is always measured: ratios need it
    ratio = step[(step.variant == "transformer") & (step.metric == "ratio_to_transformer")].value.item()
    assert ratio == 1.0
    assert (step[step.metric == "tokens_per_s"].value > 0).all()
    # matmul FLOPs of the Transformer's fwd + bwd: at least the tied output layer's 6·B·T·D·V, at most 6 FLOPs per
    # parameter and token plus causal attention's score and value products
    cfg = get_scale("tiny")
    B, T, D, V, L = (cfg.train.batch_size, cfg.model.context_len, cfg.model.dim, cfg.model.vocab_size,
                     cfg.model.n_layers)
    metric = lambda v, m: step[(step.variant == v) & (step.metric == m)].value.item()  # noqa: E731
    flops = metric("transformer", "matmul_flops")
    assert 6 * B * T * D * V <= flops <= 6 * B * T * metric("transformer", "n_params") + L * 3 * 4 * B * T * T * D
    assert metric("titans", "matmul_flops") > flops  # the memory's updates cost more than attention at this size
    readme = (out / "README-tiny.md").read_text()
    assert "hopelab bench" in readme and "| titans |" in readme and "torch_threads" in readme


def test_bench_recompute_rows_save_less_and_count_the_recomputation(tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        app,
        ["bench", "--scale", "tiny", "--variants", "hope_no_cms", "--recompute", "--repeats", "1", "--no-probes",
         "--no-audit", "--no-reference", "--out", str(out), "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    step = pd.read_parquet(out / "bench-tiny.parquet").query("section == 'train_step'")
    assert set(step.variant) == {"hope_no_cms", "hope_no_cms+recompute", "transformer"}
    metric = lambda v, m: step[(step.variant == v) & (step.metric == m)].value.item()  # noqa: E731
    assert metric("hope_no_cms+recompute", "activation_bytes") < 0.5 * metric("hope_no_cms", "activation_bytes")
    # the recomputed forward is counted: more FLOPs than the plain step, fewer than two full steps
    plain, recomputed = metric("hope_no_cms", "matmul_flops"), metric("hope_no_cms+recompute", "matmul_flops")
    assert plain < recomputed < 2 * plain
    assert "+recompute: the same variant" in (out / "README-tiny.md").read_text()


def test_bench_rejects_unknown_variant(tmp_path):
    from hopelab.errors import UserError

    result = CliRunner().invoke(app, ["bench", "--variants", "nope", "--out", str(tmp_path)])
    assert isinstance(result.exception, UserError) and "nope" in str(result.exception)


@pytest.mark.slow
def test_probe_overhead_pairs_runs_in_both_orders(tmp_path):
    """Two pairs of tiny runs (on, off), (off, on): wall times, the mean pair ratio, and the probes' share."""
    from hopelab.bench.probe_overhead import probe_overhead

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Document {i} says the {i % 7} of the {i % 5} and a word." * 20 for i in range(40)))
    res = probe_overhead(
        "tiny", steps=4, data=str(corpus), accelerator="cpu", out=str(tmp_path),
        model_overrides={"dim": 16, "n_layers": 1, "n_heads": 2, "context_len": 16, "vocab_size": 300},
        train_overrides={"batch_size": 2, "ckpt_every": 2, "val_batches": 1},
    )
    assert res["pairs"] == 2 and res["steps"] == 4
    assert res["with_probes_s"] > 0 and res["without_probes_s"] > 0 and res["overhead"] > -1
    assert 0 < res["probe_share"] < 1  # the probed runs did spend time in their probes
    assert list(tmp_path.glob("hopelab-bench-*")) == []  # the scratch runs are gone
