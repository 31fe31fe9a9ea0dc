"""Tiny real training runs, asserting on the files they leave: schema, probes, metrics, checkpoints; resume
after SIGKILL (a real `python -m hopelab.cli train` subprocess, killed, then the run resumed); NaN; a corrupt
last checkpoint; CLI errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from hopelab.config import ModelConfig
from hopelab.errors import UserError
from hopelab.records import METRICS_SCHEMA, PROBE_SCHEMA
from hopelab.run import RunSpec, parse_overrides, train_one

pytestmark = pytest.mark.slow

SETTINGS = {  # tiny: dim 32, one layer, context 64, a 512-token BPE trained on the test corpus
    "dim": 32, "n_layers": 1, "n_heads": 4, "context_len": 64, "vocab_size": 512,
    "batch_size": 4, "ckpt_every": 5, "val_batches": 2,
}
STEPS = 15
ROW_KEY = ["probe", "metric", "step", "layer", "component", "level", "level_other", "param", "position", "threshold"]
REQUIRED = {
    "cms": {"param_norm", "drift_prev", "drift_init", "cos_sim"},
    "selfmod": {"drift_init", "norm", "rel_drift_meta_fast"},
    "surprise": {"mean", "std", "min", "p10", "p50", "p90", "max", "gate_pass_rate"}
    | {f"ce_{k}" for k in ("mean", "std", "min", "p10", "p50", "p90", "max")},
    "gradflow": {"grad_norm", "grad_is_none", "grad_is_zero", "n_params_total", "n_grad_none", "n_grad_zero"},
    "intervene": {"loss", "seq_loss", "seq_bucket_loss"},
}




@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """A small text corpus and a data cache shared by the module's runs (the BPE is trained once)."""
    import random

    root = tmp_path_factory.mktemp("train")
    rng = random.Random(0)
    words = ("the of and to in a is that for it as was with be by on not he this are or his from at which but "
             "have an they you were her she there been one all we their has would when if so no").split()
    docs = [" ".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))).capitalize() + "."
                     for _ in range(rng.randint(10, 40))) for _ in range(40)]
    path = root / "corpus.txt"
    path.write_text("\n\n".join(docs))
    return path, root / "cache"


def make_spec(variant: str, out: Path, corpus_path: Path, steps: int = STEPS, **extra) -> RunSpec:
    model_over, train_over = parse_overrides([f"{k}={v}" for k, v in {**SETTINGS, **extra}.items()])
    return RunSpec(variant=variant, scale="tiny", seed=0, study="t", steps=steps, data=str(corpus_path),
                   out=str(out), model_overrides=model_over, train_overrides=train_over, accelerator="cpu")


def quiet(step, total, loss):
    pass


def read_probes(run_dir: Path):
    files = sorted((run_dir / "probes").glob("*.parquet"))
    for f in files:
        assert pq.read_schema(f).equals(PROBE_SCHEMA, check_metadata=False), f
    return pq.ParquetDataset(files).read().to_pandas() if files else None


def read_metrics(run_dir: Path):
    table = pq.read_table(run_dir / "metrics.parquet")
    assert table.schema.equals(METRICS_SCHEMA, check_metadata=False)
    return table.to_pandas()


@pytest.fixture(scope="module")
def hope_run(corpus, tmp_path_factory):
    """An uninterrupted hope run: checked on its own and the reference of the kill-and-resume test."""
    torch.set_num_threads(1)
    corpus_path, cache = corpus
    spec = make_spec("hope", tmp_path_factory.mktemp("ref"), corpus_path)
    result = train_one(spec, progress=quiet, cache_dir=str(cache))
    return spec, result


# ------------------------------------------------------------------------------------------ one whole run


def test_run_directory_schema_probes_and_metrics(hope_run):
    spec, result = hope_run
    run_dir = spec.run_dir
    assert result.status == "done" and result.last_step == STEPS and result.run_id == spec.run_id
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["last_step"] == STEPS and manifest["reason"] is None
    assert manifest["final_val_loss"] == result.final_val_loss and math.isfinite(result.final_val_loss)
    assert manifest["wall_time_s"] > 0 and manifest["started"] and manifest["ended"]
    assert "git_sha" in manifest and manifest["versions"]["torch"] and manifest["hardware"]["torch_threads"] == 1
    assert manifest["probe_errors"] is None
    config = json.loads((run_dir / "config.json").read_text())
    assert config["variant"] == "hope" and config["model"]["dim"] == 32 and config["train"]["steps"] == STEPS
    assert config["n_params"] > 0 and config["spec"]["seed"] == 0
    refs = config["data"]["references"]  # the report's unigram/bigram lines (tests/test_references.py)
    assert 0 < refs["bigram"] < refs["unigram"] <= math.log(config["model"]["vocab_size"]) + 0.5

    # checkpoints: the last two, each carrying the resolved config
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step000010.ckpt", "step000015.ckpt"]
    ckpt = torch.load(run_dir / "checkpoints" / "step000015.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STEPS
    assert json.loads(json.dumps(ckpt["hopelab"]["config"])) == config

    # probes: every required metric at every checkpoint (and step 0), no duplicate rows
    df = read_probes(run_dir)
    assert not df.duplicated(ROW_KEY).any()
    assert (df.run_id == spec.run_id).all() and (df.variant == "hope").all() and (df.seed == 0).all()
    for probe, metrics in REQUIRED.items():
        sub = df[df.probe == probe]
        steps = [5, 10, 15] if probe == "gradflow" else [0, 5, 10, 15]
        assert sorted(sub.step.unique()) == steps, probe
        for step in steps:
            assert metrics <= set(sub[sub.step == step].metric), (probe, step)
    assert (df.tokens == df.step * 4 * 64).all()
    assert df[df.probe == "selfmod"].component.dropna().unique().size == 6
    positions = df[(df.probe == "selfmod") & (df.metric == "rel_drift_meta_fast")].position.dropna()
    assert sorted(positions.unique()) == [16, 32, 48, 64]
    realised = df[(df.metric == "gate_pass_rate") & (df.component == "gate")]  # at the configured (default) τ
    assert realised.threshold.unique().tolist() == [ModelConfig().surprise_threshold]
    # intervene: the tracked switches on 8 sequences before the last step, every switch but the resets on 64 at it
    iv = df[(df.probe == "intervene") & (df.metric == "seq_loss")]
    assert set(iv[iv.step == 5].component) == {"none", "selfmod_writes_off", "all_writes_off"}
    assert iv[iv.step == 5].level.nunique() == 8 and iv[iv.step == 15].level.nunique() == 64
    assert set(iv[iv.step == 15].component) == {"none", "selfmod_writes_off", "memory_writes_off", "cms_writes_off",
                                               "all_writes_off", "gate_open", "gate_closed"}

    # values move between checkpoints
    def value(probe, metric, step, **where):
        sub = df[(df.probe == probe) & (df.metric == metric) & (df.step == step)]
        for k, v in where.items():
            sub = sub[sub[k] == v]
        return sub.value.tolist()

    assert value("cms", "drift_init", 0) == [0.0, 0.0]
    assert all(v > 0 for v in value("cms", "drift_init", 5))
    assert value("cms", "drift_init", 10) != value("cms", "drift_init", 5)
    assert value("selfmod", "drift_init", 10) != value("selfmod", "drift_init", 5)
    assert value("surprise", "ce_mean", 15) != value("surprise", "ce_mean", 0)
    assert value("gradflow", "n_params_total", 5)[0] > 0

    # metrics: train loss every step once, val loss and tokens/s at the checkpoints
    m = read_metrics(run_dir)
    assert not m.duplicated(["metric", "step"]).any()
    assert sorted(m[m.metric == "train_loss"].step) == list(range(1, STEPS + 1))
    assert sorted(m[m.metric == "val_loss"].step) == [0, 5, 10, 15]
    assert sorted(m[m.metric == "tokens_per_s"].step) == [5, 10, 15]
    val = m[m.metric == "val_loss"].set_index("step").value
    assert val[15] == pytest.approx(result.final_val_loss, rel=1e-6) and val[15] < val[0]


def test_done_run_is_not_retrained_and_changed_settings_are_refused(hope_run, corpus):
    spec, first = hope_run
    ckpt = spec.run_dir / "checkpoints" / "step000015.ckpt"
    mtime = ckpt.stat().st_mtime_ns
    again = train_one(spec, progress=quiet, cache_dir=str(corpus[1]))
    assert again.status == "done" and again.final_val_loss == first.final_val_loss
    assert ckpt.stat().st_mtime_ns == mtime
    changed = make_spec("hope", Path(spec.out), corpus[0], lr=1e-3)
    with pytest.raises(UserError, match="different settings"):
        train_one(changed, progress=quiet, cache_dir=str(corpus[1]))


# ---------------------------------------------------------------------------------- SIGKILL and resume


def test_sigkill_midway_then_rerun_with_recompute_matches_uninterrupted(hope_run, corpus, tmp_path):
    ref_spec, ref = hope_run
    corpus_path, cache = corpus
    out = tmp_path / "killed"
    cmd, env = cli_train_command(out, corpus)
    run_dir = make_spec("hope", out, corpus_path).run_dir
    first_ckpt = run_dir / "checkpoints" / "step000005.ckpt"

    kill_after(first_ckpt, cmd, env, run_dir)

    # the same run again (in this process: it is the same entry point the CLI calls, and saves a start-up),
    # resumed with recomputation on: it changes how the run executes, not what it computes
    resumed = make_spec("hope", out, corpus_path)
    resumed.recompute = True
    rerun = train_one(resumed, progress=quiet, cache_dir=str(cache))
    assert rerun.status == "done"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["last_step"] == STEPS
    assert manifest["attempts"][-1]["from_step"] >= 5
    assert manifest["hardware"]["recomputed_modules"] == 3  # this attempt: SR-Titans and two CMS levels
    assert manifest["final_val_loss"] == ref.final_val_loss  # bit-identical on CPU with the same seed

    assert_same_records(run_dir, ref_spec.run_dir, metrics_rel=0.0, probes_rel=1e-6)


def kill_after(ckpt: Path, cmd: list[str], env: dict[str, str], run_dir: Path) -> None:
    """Start the CLI run, SIGKILL it once `ckpt` exists, and check it was killed midway."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ckpt.exists(), "the first checkpoint never appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "running"  # killed midway, not after the end
    assert not (run_dir / "checkpoints" / f"step{STEPS:06d}.ckpt").exists()


@pytest.fixture(scope="module")
def stream_run(corpus, tmp_path_factory):
    """An uninterrupted streaming hope run (segments=3): the reference of the streaming resume tests."""
    corpus_path, cache = corpus
    spec = make_spec("hope", tmp_path_factory.mktemp("stream"), corpus_path, segments=3)
    result = train_one(spec, progress=quiet, cache_dir=str(cache))
    assert result.status == "done"
    return spec, result


def test_streaming_sigkill_inside_a_stream_then_resume_matches_uninterrupted(stream_run, corpus, tmp_path):
    """segments=3: steps 3, 4, 5 read the windows of one stream, so checkpoint 5 holds the state step 4 left
    and the resumed run must start step 5 from it; every loss and probe row equals an uninterrupted run's."""
    corpus_path, cache = corpus
    ref_spec, ref = stream_run
    out = tmp_path / "killed"
    cmd, env = cli_train_command(out, corpus, "--set", "segments=3")
    run_dir = make_spec("hope", out, corpus_path, segments=3).run_dir
    kill_after(run_dir / "checkpoints" / "step000005.ckpt", cmd, env, run_dir)
    rerun = train_one(make_spec("hope", out, corpus_path, segments=3), progress=quiet, cache_dir=str(cache))
    assert rerun.status == "done", rerun.reason
    assert rerun.final_val_loss == ref.final_val_loss
    assert_same_records(run_dir, ref_spec.run_dir, metrics_rel=0.0, probes_rel=1e-6)


def test_streaming_under_ddp_killed_inside_a_stream_resumes_like_one_process(stream_run, corpus, tmp_path):
    """Two DDP processes each carry their rows of the streams; checkpoint 5 gathers them in global row order and
    each rank takes its own back on resume: the run matches the one-process streaming run."""
    ref_spec, ref = stream_run
    out = tmp_path / "ddp"
    cmd, env = cli_train_command(out, corpus, "--set", "segments=3", "--devices", "2", "--strategy", "ddp")
    run_dir = make_spec("hope", out, corpus[0], segments=3).run_dir
    kill_after(run_dir / "checkpoints" / "step000005.ckpt", cmd, env, run_dir)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["attempts"][-1]["from_step"] >= 5
    assert manifest["final_val_loss"] == pytest.approx(ref.final_val_loss, rel=1e-5)
    assert_same_records(run_dir, ref_spec.run_dir, metrics_rel=1e-5, probes_rel=1e-4, probes_abs=1e-8)


def cli_train_command(out: Path, corpus, *extra: str) -> tuple[list[str], dict[str, str]]:
    """`python -m hopelab.cli train` of the reference hope run into `out`, and its environment."""
    corpus_path, cache = corpus
    cmd = [sys.executable, "-m", "hopelab.cli", "train", "--variant", "hope", "--scale", "tiny",
           "--steps", str(STEPS), "--seed", "0", "--study", "t", "--data", str(corpus_path), "--out", str(out),
           "--accelerator", "cpu", *extra]
    for k, v in SETTINGS.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd, {**os.environ, "HOPELAB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


def assert_same_records(run_dir: Path, ref_dir: Path, metrics_rel: float, probes_rel: float,
                        probes_abs: float = 1e-9) -> None:
    """The run's train/val loss and grad norm at every step, and every probe row, match the reference run's
    (metrics_rel 0: bit-identical). probes_abs: the float32 noise allowed on near-zero rows (e.g. a drift of 1e-5,
    a difference of two close numbers, where two processes summing in another order differ in the 4th digit)."""
    m, m_ref = read_metrics(run_dir), read_metrics(ref_dir)
    assert not m.duplicated(["metric", "step"]).any()
    for metric in ("train_loss", "val_loss", "grad_norm"):
        got = m[m.metric == metric].sort_values("step")
        want = m_ref[m_ref.metric == metric].sort_values("step")
        assert got.step.tolist() == want.step.tolist(), metric
        assert got.value.tolist() == pytest.approx(want.value.tolist(), rel=metrics_rel, abs=0.0), metric
    df, df_ref = read_probes(run_dir), read_probes(ref_dir)
    assert not df.duplicated(ROW_KEY).any()
    assert len(df) == len(df_ref)
    cols = [c for c in ROW_KEY if c != "param"] + ["param"]
    got = df.sort_values(cols, na_position="first").reset_index(drop=True)
    want = df_ref.sort_values(cols, na_position="first").reset_index(drop=True)
    assert got[ROW_KEY].equals(want[ROW_KEY])
    want_values = want.value.fillna(-1).tolist()
    assert got.value.fillna(-1).tolist() == pytest.approx(want_values, rel=probes_rel, abs=probes_abs)


def test_ddp_over_two_cpu_processes_matches_one_process(hope_run, corpus, tmp_path):
    """Multi-device training through Lightning, as it would run on two GPUs: DDP over two CPU processes (gloo)
    splits the same global batch, so it must reproduce the one-process run up to float rounding of the gradient
    all-reduce, and rank 1 must write nothing of its own (no duplicate rows, one set of files)."""
    ref_spec, ref = hope_run
    out = tmp_path / "ddp"
    cmd, env = cli_train_command(out, corpus, "--devices", "2", "--strategy", "ddp")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = make_spec("hope", out, corpus[0]).run_dir
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["last_step"] == STEPS
    assert manifest["hardware"]["world_size"] == 2 and manifest["hardware"]["strategy"] == "DDPStrategy"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step000010.ckpt", "step000015.ckpt"]
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(
        p.name for p in ref_spec.run_dir.rglob("*") if p.is_file())
    assert manifest["final_val_loss"] == pytest.approx(ref.final_val_loss, rel=1e-5)
    assert_same_records(run_dir, ref_spec.run_dir, metrics_rel=1e-5, probes_rel=1e-4, probes_abs=1e-8)


# ------------------------------------------------------------------------------------ failures and errors


def test_nan_loss_fails_the_run_naming_step_and_quantity(corpus, tmp_path):
    spec = make_spec("transformer", tmp_path, corpus[0], steps=10, lr=1e30)
    result = train_one(spec, progress=quiet, cache_dir=str(corpus[1]))
    assert result.status == "failed"
    manifest = json.loads((spec.run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "train_loss" in manifest["reason"]
    step = manifest["failed_step"]
    assert isinstance(step, int) and 1 < step <= 10 and f"at step {step}" in manifest["reason"]
    m = read_metrics(spec.run_dir)
    losses = m[m.metric == "train_loss"].set_index("step").value
    assert losses.index.max() == step and not math.isfinite(losses[step])
    assert all(math.isfinite(v) for v in losses[losses.index < step])


def test_corrupt_last_checkpoint_falls_back_to_the_previous(corpus, tmp_path):
    spec = make_spec("transformer", tmp_path, corpus[0], steps=10)
    first = train_one(spec, progress=quiet, cache_dir=str(corpus[1]))
    assert first.status == "done"
    last = spec.run_dir / "checkpoints" / "step000010.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as by a crash mid-write
    manifest_path = spec.run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["status"] = "running"
    manifest_path.write_text(json.dumps(manifest))
    second = train_one(spec, progress=quiet, cache_dir=str(corpus[1]))
    assert second.status == "done" and second.final_val_loss == first.final_val_loss
    assert (spec.run_dir / "checkpoints" / "step000010.ckpt.corrupt").exists()
    assert json.loads(manifest_path.read_text())["attempts"][-1]["from_step"] == 5
    m = read_metrics(spec.run_dir)
    assert not m.duplicated(["metric", "step"]).any()
    assert sorted(m[m.metric == "train_loss"].step) == list(range(1, 11))


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--variant", "hopeless"], "unknown variant 'hopeless'"),
        (["--variant", "hope", "--scale", "huge"], "unknown scale 'huge'"),
        (["--variant", "hope", "--set", "colour=blue"], "unknown --set key 'colour'"),
        (["--variant", "hope", "--set", "lr=fast"], "lr='fast': expected a number"),
        (["--variant", "hope", "--set", "steps=0"], "steps must be >= 1"),
    ],
)
def test_cli_user_errors_are_one_line_exit_2(args, expected, tmp_path, monkeypatch, capsys):
    from hopelab import cli

    monkeypatch.setattr(sys, "argv", ["hopelab", "train", "--out", str(tmp_path), *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_intervene_command_on_a_finished_run(hope_run, corpus):
    """`hopelab intervene RUN_DIR --step 10 --switch ...`: the checkpoint rebuilt from itself, the asked switches
    evaluated on the run's probe set, a table printed; the rows replace the probe's own of that step (those
    were on 8 sequences), and a second call with another switch keeps the first call's (the same sequences)."""
    from typer.testing import CliRunner

    from hopelab.cli import app

    spec, _ = hope_run
    env = {"HOPELAB_CACHE": str(corpus[1])}
    runner = CliRunner()
    before = read_probes(spec.run_dir)
    result = runner.invoke(app, ["intervene", str(spec.run_dir), "--step", "10", "--switch", "cms_writes_off",
                                 "--switch", "reset_every_32"], env=env)
    assert result.exit_code == 0, result.output
    assert "cms_writes_off" in result.output and "95% CI" in result.output
    df = read_probes(spec.run_dir)
    iv = df[(df.probe == "intervene") & (df.step == 10) & (df.metric == "seq_loss")]
    assert set(iv.component) == {"none", "cms_writes_off", "reset_every_32"} and iv.level.nunique() == 64
    old_none = before[(before.probe == "intervene") & (before.step == 10) & (before.metric == "seq_loss")
                      & (before.component == "none")].sort_values("level").value.to_numpy()
    new_none = iv[iv.component == "none"].sort_values("level").value.to_numpy()[:8]
    assert new_none == pytest.approx(old_none, rel=1e-5)  # the same model and sequences as the probe saw
    again = runner.invoke(app, ["intervene", str(spec.run_dir), "--step", "10", "--switch", "gate_open"], env=env)
    assert again.exit_code == 0 and "kept the rows already there of: cms_writes_off, reset_every_32" in again.output
    iv = read_probes(spec.run_dir)
    iv = iv[(iv.probe == "intervene") & (iv.step == 10) & (iv.metric == "seq_loss")]
    assert set(iv.component) == {"none", "cms_writes_off", "reset_every_32", "gate_open"}
    assert (iv.groupby("component")["level"].nunique() == 64).all()
    for bad, why in ((["--switch", "nope"], "unknown switch"), (["--step", "3"], "keeps checkpoints of steps 10, 15")):
        err = runner.invoke(app, ["intervene", str(spec.run_dir), *bad], env=env).exception
        assert isinstance(err, UserError) and why in str(err)  # main() prints it as one line, exit 2
