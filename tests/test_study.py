"""Study definitions, planning, sharding, locks, study.json and the `hopelab study` CLI (no training here;
tests/test_study_e2e.py trains a real tiny study, kills it and resumes it)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from hopelab.cli import app, main
from hopelab.errors import UserError
from hopelab.models import VARIANTS
from hopelab.run import RunState
from hopelab.run.lock import FileLock, LockHeld
from hopelab.study import Cell, Study, load_study, plan_runs, shard_runs
from hopelab.study.plan import parse_shard
from hopelab.study.runner import execute_run, threads_per_job
from hopelab.study.study_json import read_study_json, record_runs, register_study, run_record

runner = CliRunner()


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The real console entry point (UserError -> one line, exit 2)."""
    monkeypatch.setattr(sys, "argv", ["hopelab", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def write_study_file(path, body: str):
    path.write_text("from hopelab.study import Cell, Study\n" + body)
    return path


# ------------------------------------------------------------------------------------ definitions
def test_ablation_is_table_1_of_the_dissection_study():
    study = load_study("ablation").study
    small = {r.spec.run_name for r in plan_runs(study, scales=["small"])}
    scaled = {r.spec.run_name for r in plan_runs(study, scales=["scaled"])}
    six = {"hope", "hope_no_cms", "hope_no_selfmod", "hope_no_surprise", "titans", "transformer"}
    assert small == six  # the parameter-matched Transformer only at scaled (81.2M vs 73.1M)
    assert scaled == six | {"transformer_matched"}
    assert len(plan_runs(study, scales=["tiny"])) == 12  # two seeds everywhere: paired intervals (make study)
    assert len(plan_runs(study, scales=["small"])) == 12 and len(plan_runs(study, scales=["small"], seeds=3)) == 18
    scaling = load_study("scaling").study
    assert scaling.scales == ("small", "scaled")
    assert [c.run_name for c in scaling.cells] == [c.run_name for c in study.cells]


def test_sweep_and_period_studies():
    sweep = load_study("surprise_sweep").study
    taus = {c.tag: c.model["surprise_threshold"] for c in sweep.cells if c.tag.startswith("tau")}
    assert taus == {f"tau{t}": t for t in (0.02, 0.05, 0.1, 0.2, 0.5)}
    assert all(c.model["surprise_mode"] == "absolute" for c in sweep.cells if c.tag.startswith("tau"))
    relative = next(c for c in sweep.cells if c.tag == "relative")
    assert relative.variant == "hope" and relative.model["surprise_mode"] == "relative"
    periods = [c.model["cms_periods"] for c in load_study("cms_periods").study.cells if c.variant == "hope"]
    assert (8, 8) in periods and (8, 32) in periods and len(periods) >= 3


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(cells=[Cell("hopee")]), "unknown variant 'hopee'; choose one of: " + ", ".join(VARIANTS)),
        (dict(cells=[Cell("hope")], scales=("huge",)), "unknown scale 'huge'; choose one of: tiny, small, scaled"),
        (dict(cells=[Cell("hope", scales=("big",))]), "unknown scale 'big'"),
        (dict(cells=[Cell("hope", model={"dimm": 3})]), "unknown model override key 'dimm'; valid keys: vocab_size"),
        (dict(cells=[Cell("hope", train={"dim": 3})]), "unknown train override key 'dim'; valid keys: steps"),
        (dict(cells=[Cell("hope", model={"dim": "wide"})]), "dim='wide': expected an integer"),
        (dict(cells=[Cell("hope", train={"seed": 3})]), "seeds come from the study"),
        (dict(cells=[Cell("hope"), Cell("hope")]), "run name 'hope' appears twice"),
        (dict(cells=[Cell("hope")], seeds=0), "seeds must be a positive integer"),
        (dict(cells=[Cell("hope")], seeds={"big": 2}), "seeds for unknown scale 'big'"),
        (dict(cells=[]), "has no cells"),
    ],
)
def test_definition_validates_on_construction(kwargs, needle):
    with pytest.raises(UserError) as err:
        Study(name="mine", description="d", **kwargs)
    assert needle in str(err.value)


def test_set_overrides_apply_after_the_cells_own():
    sweep = load_study("surprise_sweep").study
    runs = plan_runs(sweep, overrides={"dim": "32", "cms_periods": "4,16", "steps": "6", "surprise_threshold": "0.5"})
    assert len(runs) == len(sweep.cells) * sweep.seeds
    for run in runs:
        assert run.spec.model_overrides["dim"] == 32
        assert run.spec.model_overrides["cms_periods"] == (4, 16)
        assert run.spec.model_overrides["surprise_threshold"] == 0.5  # --set wins over the cell's tau
        assert run.spec.steps == 6 and "steps" not in run.spec.train_overrides
        assert run.tokens == 6 * 8 * 512
    with pytest.raises(UserError, match="unknown --set key 'dimm'.*valid model keys: vocab_size"):
        plan_runs(sweep, overrides={"dimm": "3"})
    with pytest.raises(UserError, match="dim 30 is not divisible by n_heads 4"):
        plan_runs(sweep, overrides={"dim": "30"})


def test_user_study_file_and_its_errors(tmp_path):
    body = 'STUDY = Study(name="mine", description="d", cells=[Cell("titans")])\n'
    good = write_study_file(tmp_path / "mine.py", body)
    loaded = load_study(str(good))
    assert loaded.study.name == "mine" and "Cell(\"titans\")" in loaded.text
    bad_syntax = tmp_path / "syntax.py"
    bad_syntax.write_text("STUDY = Study(\n")
    with pytest.raises(UserError, match=r"malformed study file .*syntax.py: line 1"):
        load_study(str(bad_syntax))
    no_study = tmp_path / "empty.py"
    no_study.write_text("X = 1\n")
    with pytest.raises(UserError, match="must define STUDY = Study"):
        load_study(str(no_study))
    with pytest.raises(UserError, match="unknown study 'nope'; choose one of: ablation, cms_levels, cms_periods, "
                                        "cms_persistent, cms_streams, lr_sweep, optimizer, recall, recall_quick, "
                                        "scaling"):
        load_study("nope")


# ------------------------------------------------------------------------------------ shards
@pytest.mark.parametrize("n", [1, 2, 3, 5, 40])
def test_shards_cover_every_run_exactly_once(n):
    runs = plan_runs(load_study("scaling").study, seeds=3)
    ids = [r.spec.run_id for r in runs]
    assert len(set(ids)) == len(ids) == (6 + 7) * 3
    shards = [[r.spec.run_id for r in shard_runs(runs, f"{i}/{n}")] for i in range(1, n + 1)]
    flat = [rid for shard in shards for rid in shard]
    assert sorted(flat) == sorted(ids)  # every run once, none twice
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
    again = plan_runs(load_study("scaling").study, seeds=3)  # deterministic: same command, same shards
    assert [[r.spec.run_id for r in shard_runs(again, f"{i}/{n}")] for i in range(1, n + 1)] == shards


@pytest.mark.parametrize("bad", ["0/2", "3/2", "1", "a/b", "1/0"])
def test_bad_shard(bad):
    with pytest.raises(UserError, match="expected I/N"):
        parse_shard(bad)


# ------------------------------------------------------------------------------------ locks
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_is_exclusive_and_stale_locks_are_taken_over(tmp_path):
    path = tmp_path / "run.lock"
    with FileLock(path):
        owner = json.loads(path.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(LockHeld):
            FileLock(path).acquire()
    assert not path.exists()  # released
    path.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "started": 0}))
    with FileLock(path):  # the pid is dead on this host: stale, taken over
        assert json.loads(path.read_text())["pid"] == os.getpid()
    path.write_text(json.dumps({"pid": dead_pid(), "host": "another-host", "started": 0}))
    with pytest.raises(LockHeld, match="another-host"):  # cannot see another host's pids: trusted
        FileLock(path).acquire()


def test_lock_stops_a_second_process_from_training_the_same_run(tmp_path):
    study = Study(name="locked", description="d", cells=[Cell("transformer")], scales=("tiny",))
    (run,) = plan_runs(study, out=str(tmp_path))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.dir.lock.parent.mkdir(parents=True)
        run.dir.lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(), "started": 0}))
        assert run.dir.state().status == "running"
        outcome = execute_run(run, tmp_path / "locked")
        assert outcome.status == "running" and f"pid {other.pid}" in outcome.reason
        assert not run.spec.run_dir.exists()  # nothing was trained
    finally:
        other.kill()
        other.wait()
    assert run.dir.state().status == "pending"  # its owner died: the lock is stale now


def test_threads_per_job():
    cores = len(os.sched_getaffinity(0))
    assert threads_per_job(1) == cores and threads_per_job(cores * 4) == 1


# ------------------------------------------------------------------------------------ study.json
def test_study_json_merges_scales_and_shards(tmp_path):
    study = load_study("scaling").study
    root = tmp_path / "scaling"
    runs = plan_runs(study, out=str(tmp_path))
    small = [r for r in runs if r.spec.scale == "small"]
    scaled = [r for r in runs if r.spec.scale == "scaled"]
    register_study(root, study.to_dict(), "cmd small", [run_record(r, r.dir.state()) for r in small])
    register_study(root, study.to_dict(), "cmd scaled", [run_record(r, r.dir.state()) for r in scaled])
    done = RunState(small[0].spec.run_id, "done", final_val_loss=4.2, wall_time_s=3.0)
    record_runs(root, [run_record(small[0], done)])
    data = read_study_json(root)
    assert [r["run_id"] for r in data["runs"]] == [r.spec.run_id for r in runs]  # one row per run, no duplicates
    first = data["runs"][0]
    assert first["status"] == "done" and first["final_val_loss"] == 4.2 and first["path"] == "small/hope/seed0"
    assert {r["status"] for r in data["runs"][1:]} == {"pending"}
    assert data["commands"] == ["cmd small", "cmd scaled"] and data["definition"]["name"] == "scaling"


# ------------------------------------------------------------------------------------ CLI
def test_cli_list_and_show():
    result = runner.invoke(app, ["study", "list"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in ("ablation", "surprise_sweep", "cms_periods", "scaling"):
        assert name in result.output
    result = runner.invoke(app, ["study", "show", "ablation", "--scale", "small,scaled"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "transformer_matched" in result.output
    # 2000 steps x 8 x 512 = 8.19M tokens per run; 2 seeds x (6 + 7) cells
    assert "8.19M" in result.output and "total: 26 runs, 213M training tokens" in result.output


def test_cli_dry_run_shows_state_and_shards(tmp_path):
    study = write_study_file(
        tmp_path / "mini.py",
        'STUDY = Study(name="mini", description="d", cells=[Cell("transformer"), Cell("titans")], '
        'scales=("tiny",), seeds=2)\n',
    )
    args = ["study", "run", str(study), "--out", str(tmp_path / "out"), "--set", "steps=6", "--dry-run"]
    listed = []
    for i in (1, 2):
        result = runner.invoke(app, [*args, "--shard", f"{i}/2"], terminal_width=200)
        assert result.exit_code == 0, result.output
        listed.append(result.output)
    assert all("pending" in out for out in listed)
    assert sum(out.count("transformer") + out.count("titans") for out in listed) == 4
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    "args, needle",
    [
        (["study", "nosuch"], "unknown study 'nosuch'; choose one of: ablation, cms_levels, cms_periods, "
                               "cms_persistent, cms_streams, lr_sweep, optimizer, recall, recall_quick, scaling, "
                               "surprise_sweep"),
        (["study", "ablation", "--scale", "huge", "--dry-run"], "unknown scale 'huge'; choose one of: tiny, small"),
        (["study", "show", "ablation", "--set", "dimm=3"], "unknown --set key 'dimm'; valid model keys:"),
        (["study", "ablation", "--set", "dim", "--dry-run"], "expected KEY=VALUE"),
        (["study", "ablation", "--shard", "3/2", "--dry-run"], "expected I/N"),
        (["study", "ablation", "--threads", "0", "--dry-run"], "--threads must be >= 1, got 0"),
        (["study", "ablation", "--data", "/no/such/corpus.txt"], "--data /no/such/corpus.txt: no such file"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, args, needle):
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 2
    assert err.startswith("error: ") and needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out


def test_cli_malformed_study_file(monkeypatch, capsys, tmp_path):
    bad = write_study_file(tmp_path / "bad.py", 'STUDY = Study(name="bad", description="d", cells=[Cell("gpt")])\n')
    code, _, err = run_main(monkeypatch, capsys, "study", "run", str(bad), "--dry-run")
    assert code == 2 and "unknown variant 'gpt'; choose one of: hope" in err and len(err.strip().splitlines()) == 1


def test_help_reads_well():
    result = runner.invoke(app, ["study", "--help"], terminal_width=120)
    assert result.exit_code == 0
    assert "hopelab study ablation --scale small" in result.output and "list" in result.output
    result = runner.invoke(app, ["study", "ablation", "--help"], terminal_width=120)  # NAME routes to `run`
    assert result.exit_code == 0 and "--shard" in result.output and "--set" in result.output


def test_optional_int_override_is_typed():
    from hopelab.config import split_overrides

    assert split_overrides({"mlp_hidden": "300"}) == ({"mlp_hidden": 300}, {})
    assert split_overrides({"mlp_hidden": "none"}) == ({"mlp_hidden": None}, {})
    with pytest.raises(UserError):
        split_overrides({"mlp_hidden": "wide"})
