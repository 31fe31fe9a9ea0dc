"""`hopelab bench` writes its Parquet and Markdown (what it measures is not asserted: no timed tests)."""

import pandas as pd
from typer.testing import CliRunner

from hopelab.cli import app


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
    readme = (out / "README-tiny.md").read_text()
    assert "hopelab bench" in readme and "| titans |" in readme and "torch_threads" in readme


def test_bench_rejects_unknown_variant(tmp_path):
    from hopelab.errors import UserError

    result = CliRunner().invoke(app, ["bench", "--variants", "nope", "--out", str(tmp_path)])
    assert isinstance(result.exception, UserError) and "nope" in str(result.exception)
