"""`hopelab audit` on fixture models that each carry one known defect (tests/fixtures/), on healthy
look-alikes, and through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from hopelab.audit import audit
from hopelab.audit.names import component_of, is_memory_name, is_producer_name, words
from hopelab.audit.target import build_target
from hopelab.audit.tracing import ForwardTracer
from hopelab.errors import UserError

FIX = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent




def run(spec: str, **kw):
    return audit(build_target(str(FIX / spec)), target=spec, **kw)


def checks_of(report, severity=None) -> set[str]:
    return {f.check for f in report.findings if severity is None or f.severity == severity}


def finding(report, check):
    return next(f for f in report.findings if f.check == check)


# --- healthy models ---------------------------------------------------------------------------------------


def test_healthy_fast_weight_model_passes_every_check():
    model = build_target(str(FIX / "fastweight.py:build"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    r = audit(model, target="healthy")
    assert r.findings == [] and r.exit_code == 0 and r.verdict == "PASS"
    assert {c.status for c in r.checks} == {"pass"}
    assert r.settings["dtype"] == "float64"
    assert "cross-entropy" in r.settings["loss"]
    assert all(row.ok and row.status == "correct" for row in r.gradient_flow)
    memory_row = next(row for row in r.gradient_flow if row.component == "memory_init")
    assert memory_row.late_loss == "yes"
    # the caller's model is untouched: same values, still in eval mode, still float32
    assert not model.training and model.memory_init.dtype == torch.float32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_float_input_model_uses_next_step_mse():
    r = run("fastweight.py:build_float", input="float:8")
    assert r.exit_code == 0 and not checks_of(r, "critical")
    assert "MSE" in r.settings["loss"] and r.settings["input"] == "float:8"


# --- one defect each --------------------------------------------------------------------------------------


def test_detached_initial_state_is_used_but_disconnected():
    r = run("detached_init.py:build")
    f = finding(r, "disconnected_params")
    assert f.severity == "critical" and f.params == ["memory_init"]
    assert r.exit_code == 1
    row = next(row for row in r.gradient_flow if row.component == "memory_init")
    assert not row.ok and row.status == "BUG: used but disconnected"
    assert "detach" in f.evidence["parameters"]["memory_init"]["ops_in_forward"]


def test_detached_target_generator_gets_no_gradient():
    r = run("detached_target.py:build")
    f = finding(r, "disconnected_params")
    gen = {n for n in f.params if n.startswith("target_gen.")}
    assert gen == {"target_gen.0.weight", "target_gen.0.bias", "target_gen.2.weight", "target_gen.2.bias"}
    assert "memory_init" not in f.params
    assert not next(row for row in r.gradient_flow if row.component == "target_gen.*").ok


@pytest.mark.parametrize("factory", ["build", "build_item"])
def test_eta_collapsed_to_batch_scalar(factory):
    r = run(f"eta_batch_scalar.py:{factory}")
    f = finding(r, "eta_alpha_collapse")
    assert f.severity == "critical" and f.params == ["eta_proj"]
    if factory == "build":
        assert f.evidence["collapsed_reaching_output"] == {"eta_proj": "mean()"}
    else:
        assert f.evidence["python_scalar_escapes"][0]["op"] == "item"
    assert r.has("batch_independence", "critical")  # the batch mean couples the samples, too


def test_no_in_sequence_update_has_conv_window_receptive_field():
    r = run("no_in_sequence_update.py:build")
    f = finding(r, "receptive_field")
    assert f.severity == "critical"
    assert f.evidence["reach_train"] == 3  # the 4-token convolution, nothing more
    assert not r.has("causality") and not r.has("batch_independence")


def test_future_leak_inside_chunk_is_seen_in_float64_only():
    r = run("future_leak.py:build")
    f = finding(r, "causality")
    assert f.severity == "critical"
    perturbed = {v["perturbed_position"] for v in f.evidence["violations"]}
    assert any(j % 8 not in (0,) for j in perturbed)  # inside chunks, not only at chunk starts
    assert all(v["max_rel_change"] < 1e-5 for v in f.evidence["violations"])  # a 1e-7-level leak
    r32 = run("future_leak.py:build", dtype="float32")
    assert not r32.has("causality") and r32.settings["tolerance"] == 1e-5


def test_memory_shared_across_batch():
    r = run("shared_batch_memory.py:build")
    f = finding(r, "batch_independence")
    assert f.severity == "critical" and f.evidence["rel_change_other_samples"]["eval"] > 1e-6
    assert not r.has("eta_alpha_collapse")  # the state is averaged, η itself is per token


def test_memory_off_in_eval_is_a_warning():
    r = run("no_eval_update.py:build")
    f = finding(r, "eval_memory")
    assert f.severity == "warning" and f.evidence["reach_train"] == 63 and f.evidence["reach_eval"] == 3
    assert r.exit_code == 0 and not checks_of(r, "critical")


def test_state_detached_between_chunks_blocks_late_gradients():
    r = run("truncated_state.py:build")
    f = finding(r, "in_context_grad")
    assert f.severity == "critical" and "memory_init" in f.params
    assert f.evidence["parameters"]["memory_init"]["grad_full_loss"] == "ok"
    row = next(row for row in r.gradient_flow if row.component == "memory_init")
    assert row.late_loss == "no" and not row.ok


def test_state_carried_across_calls():
    r = run("stateful.py:build")
    f = finding(r, "state_across_calls")
    assert f.severity == "warning" and f.evidence["rel_diff_second_call"]["eval"] > 1e-6
    assert not r.has("batch_independence")  # fresh copies keep the carried state out of the other checks


def test_nan_output():
    r = run("nonfinite.py:build")
    assert finding(r, "nonfinite").severity == "critical"
    skipped = {c.name for c in r.checks if c.status == "skipped"}
    assert {"receptive_field", "causality"} <= skipped


# --- healthy look-alikes ----------------------------------------------------------------------------------


def test_unused_template_module_is_info_only():
    r = run("template_module.py:build")
    assert r.exit_code == 0 and not checks_of(r, "critical") and not checks_of(r, "warning")
    assert finding(r, "unused_params").params == ["memory_template.weight"]
    row = next(row for row in r.gradient_flow if row.component == "memory_template")
    assert row.ok and row.gradient == "no: never used"


def test_zero_initialised_gate_is_not_a_finding():
    r = run("zero_gate.py:build")
    assert r.exit_code == 0 and not checks_of(r, "critical") and not checks_of(r, "warning")
    f = finding(r, "zero_grad_at_init")
    assert f.severity == "info" and {"memory_init", "k_proj.weight", "eta_proj.weight"} <= set(f.params)
    assert f.evidence["parameters"]["memory_init"] == {"grad_base": "zero", "grad_perturbed": "ok"}


# --- the seed review, automated ----------------------------------------------------------------------------


def test_review_replica_reproduces_the_reviews_gradient_flow_table():
    spec = str(FIX / "review_hope.py")
    r = run("review_hope.py:build", call=f"{spec}:rollout")
    rows = {row.component: row for row in r.gradient_flow}
    for mem in ("M_k", "M_v", "M_eta", "M_alpha", "M_memory"):  # review §6: 🔴 Bug
        for w in ("w1", "w2"):
            assert rows[f"block.{mem}.{w}"].status == "BUG: used but disconnected"
    assert rows["block.self_modifier.net.*"].status == "BUG: used but disconnected"
    for ok in ("block.q_proj", "block.out_proj", "embed", "head"):  # review §6: ✅ correct
        assert rows[ok].ok and rows[ok].gradient == "yes"
    assert set(finding(r, "eta_alpha_collapse").params) == {"block.M_eta", "block.M_alpha"}  # §4.4
    assert finding(r, "eval_memory").severity == "warning"  # §5.4
    # one training step (reset, then one call): no memory within the sequence (§4.5)
    step = run("review_hope.py:build", call=f"{spec}:training_step")
    assert finding(step, "receptive_field").evidence["reach_train"] == 0
    assert finding(step, "disconnected_params").params == ["block.M_memory.w1.weight", "block.M_memory.w2.weight"]
    # without --call the reset never runs inside the audit: the report says how to show it
    plain = run("review_hope.py:build")
    assert "reset_all_memories" in finding(plain, "unused_params").evidence["hint"]
    assert plain.settings["dtype"] == "float32" and "does not run in float64" in plain.notes[0]


# --- interface --------------------------------------------------------------------------------------------


def test_custom_call_and_loss_as_strings_and_callables():
    spec = str(FIX / "stateful_call.py")
    with pytest.raises(UserError, match="calling the model failed: TypeError"):
        run("stateful_call.py:build")
    r = run("stateful_call.py:build", call=f"{spec}:run", loss=f"{spec}:loss")
    assert r.exit_code == 0 and r.findings == [] and r.settings["loss"] == "user loss (--loss)"
    mod = sys.modules[[k for k in sys.modules if k.startswith("_hopelab_user_stateful_call")][0]]
    r2 = run("stateful_call.py:build", call=mod.run, loss=lambda out, x, model: mod.loss(out, x))
    assert r2.exit_code == 0 and r2.findings == []


def test_memory_params_glob_extends_the_audited_set():
    base = run("fastweight.py:build").settings["memory_parameters_audited"]
    r = run("fastweight.py:build", memory_params=["head.*"])
    assert r.settings["memory_parameters_audited"] == base + 2


def test_usage_errors():
    model = build_target(str(FIX / "fastweight.py:build"))
    with pytest.raises(UserError, match="--input"):
        audit(model, input="floats")
    with pytest.raises(UserError, match="not \\[B=2"):
        audit(model, call=lambda m, x: m(x)[:, :5])
    with pytest.raises(UserError, match="scalar"):
        audit(model, loss=lambda out, x: out.mean(-1))
    with pytest.raises(UserError, match="does not exist"):
        build_target("no/such/file.py:build")
    with pytest.raises(UserError, match="has no attribute 'nope'"):
        build_target(str(FIX / "fastweight.py:nope"))
    with pytest.raises(UserError, match="must look like"):
        build_target("fastweight")


def test_renderings():
    r = run("detached_init.py:build")
    data = json.loads(r.to_json())
    assert data["exit_code"] == 1 and data["counts"]["critical"] == 1
    assert data["findings"][0]["check"] == "disconnected_params"
    assert {row["component"] for row in data["gradient_flow"]} >= {"memory_init", "q_proj", "head"}
    md = r.to_markdown()
    assert "| Component | Parameters | Gradients from outer loss?" in md
    assert "`memory_init`" in md and "BUG: used but disconnected" in md
    console = Console(record=True, width=160)
    r.render(console)
    text = console.export_text()
    assert "FAIL: 1 critical" in text and "Gradient-flow audit" in text


def test_report_lists_every_registered_check_once_in_registry_order():
    from hopelab.audit import CHECKS

    r = run("nonfinite.py:build")  # skipped checks are listed too
    assert [c.name for c in r.checks] == [c.name for c in CHECKS]
    assert [c.title for c in r.checks] == [c.title for c in CHECKS]
    assert len({c.name for c in CHECKS}) == len(CHECKS) == 13


# --- names and tracing ------------------------------------------------------------------------------------


def test_name_heuristics():
    assert words("blocks.0.M_eta.w1") == ["blocks", "M", "eta", "w"]
    assert is_memory_name("blocks.3.M_k.w1") and is_memory_name("layers.0.memInit")
    assert not is_memory_name("blocks.0.attn.qkv.weight") and not is_memory_name("lm_head.weight")
    assert is_producer_name("blocks.0.titans.hook_eta") and is_producer_name("blocks.0.M_alpha")
    assert not is_producer_name("blocks.0.M_eta.w1")  # the Linear inside a producer is not another one
    model = build_target(str(FIX / "fastweight.py:build"))
    assert component_of(model, "q_proj.weight") == "q_proj" and component_of(model, "memory_init") == "memory_init"


def test_tracer_tells_eta_collapse_from_state_averaging():
    eta_raw = torch.rand(2, 5, 1)
    state = torch.rand(2, 4, 4)
    with ForwardTracer({}, batch=2) as tr:
        tr.label(eta_raw, "eta")
        eta = torch.sigmoid(eta_raw) * 0.5  # still "the η": pure
        mixed = (eta.mean(1, keepdim=True) * state).mean(0)  # the state averaged over the batch
        collapsed = eta.mean() * state  # η folded over the batch
    assert tr.collapsed_in(mixed) == {}
    assert tr.collapsed_in(collapsed) == {"eta": "mean()"}


# --- CLI --------------------------------------------------------------------------------------------------


def test_cli_exit_codes_and_files(tmp_path):
    from hopelab.cli import app

    runner = CliRunner()
    healthy = str(FIX / "fastweight.py:build")
    res = runner.invoke(app, ["audit", healthy, "--json", str(tmp_path / "r.json"),
                              "--markdown", str(tmp_path / "r.md"), "--seq-len", "32"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["verdict"] == "PASS"
    assert (tmp_path / "r.md").read_text().startswith("# hopelab audit")
    res = runner.invoke(app, ["audit", str(FIX / "detached_init.py:build"), "--seq-len", "32"])
    assert res.exit_code == 1 and "disconnected_params" in res.output
    res = runner.invoke(app, ["audit", str(FIX / "fastweight.py:missing")])
    assert isinstance(res.exception, UserError)  # main() turns this into one line and exit 2


def test_cli_main_bad_target_is_one_line_exit_2():
    proc = subprocess.run([sys.executable, "-m", "hopelab.cli", "audit", "no_such_module_xyz:build"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot import target module 'no_such_module_xyz'")


# --- templates versus dead mechanisms ----------------------------------------------------------------------


def test_dead_submodule_is_a_critical_dead_mechanism():
    r = run("dead_mechanism.py:build")
    f = finding(r, "dead_mechanism")
    assert f.severity == "critical" and r.exit_code == 1
    assert f.evidence["module"] == "target_gen" and 0.15 < f.evidence["share_of_parameters"] < 0.25
    assert "--call" in f.title and "target_gen" in f.title
    assert set(f.params) == {"target_gen.0.weight", "target_gen.0.bias", "target_gen.2.weight", "target_gen.2.bias"}
    assert not r.has("unused_params")  # reported as dead, not as a harmless template
    row = next(row for row in r.gradient_flow if row.component == "target_gen.*")
    assert not row.ok and "dead mechanism" in row.status


@pytest.mark.parametrize("spec,twin", [("template_module.py:build", "'memory_init' holds a copy"),
                                       ("template_functional.py:build", "functional call")])
def test_template_with_a_used_twin_stays_info(spec, twin):
    r = run(spec)
    assert r.exit_code == 0 and not checks_of(r, "critical") and not r.has("dead_mechanism")
    f = finding(r, "unused_params")
    assert f.severity == "info" and len(f.params) == 1 and twin in f.evidence["twins"][f.params[0]]
    assert next(c for c in r.checks if c.name == "dead_mechanism").status == "pass"


# --- gradient correctness -----------------------------------------------------------------------------------


def test_checkpoint_rerunning_a_stateful_update_gives_wrong_gradients():
    r = run("checkpointed_state.py:build")
    f = finding(r, "wrong_gradient")
    assert f.severity == "critical" and r.exit_code == 1
    assert all(d["rel_error"] > 1e-3 for d in f.evidence["directions"])
    assert "q_proj" in f.params and "head" not in f.params and f.evidence["tolerance"] == 1e-6  # per group
    # the checkpointed forward is the same function: nothing else tells the two apart
    pure = run("checkpointed_state.py:build_pure")
    assert pure.exit_code == 0 and not checks_of(pure, "critical")
    check = next(c for c in pure.checks if c.name == "gradient_correctness")
    assert check.status == "pass" and "tolerance 1e-06" in check.summary
    assert checks_of(r) - {"wrong_gradient"} == checks_of(pure)


# --- constant rates -----------------------------------------------------------------------------------------


def test_eta_constant_by_construction_is_told_apart_from_a_batch_scalar():
    r = run("eta_constant.py:build")
    f = finding(r, "eta_alpha_constant_by_construction")
    assert f.severity == "critical" and set(f.params) == {"eta_head", "alpha_head"} and r.exit_code == 1
    assert abs(f.evidence["producers"]["eta_head"]["mean"] - 0.5) < 1e-12  # sigmoid(0) for every token
    assert not r.has("eta_alpha_collapse")  # constant, not collapsed to a batch scalar
    check = next(c for c in r.checks if c.name == "eta_alpha")
    assert check.status == "fail" and "0 collapsed to a batch scalar" in check.summary
    assert "2 constant by construction" in check.summary
    # the same producers with trainable LayerNorms: constant at the given parameters only
    twin = run("eta_constant.py:build_trainable")
    assert twin.exit_code == 0 and not checks_of(twin, "critical")
    assert finding(twin, "eta_alpha_constant_at_init").severity == "info"


# --- factory arguments and the first forward ----------------------------------------------------------------


def test_kw_arguments_reach_the_factory_and_bad_ones_are_named():
    from hopelab.audit.target import parse_kwargs

    assert parse_kwargs(["dim=8", "chunk=4", "name=fast", "sizes=[1, 2]"]) == {
        "dim": 8, "chunk": 4, "name": "fast", "sizes": [1, 2]}
    with pytest.raises(UserError, match="key=value"):
        parse_kwargs(["dim"])
    spec = str(FIX / "needs_reset.py:NeedsResetLM")
    model = build_target(spec, {"dim": 8, "chunk": 4})
    assert model.dim == 8 and model.chunk == 4
    with pytest.raises(UserError, match="unexpected keyword argument 'dimm'"):
        build_target(spec, {"dimm": 8})
    with pytest.raises(UserError, match="failed with dim=-1"):
        build_target(spec, {"dim": -1})


def test_failed_forward_lists_reset_methods_and_forward_parameters():
    spec = str(FIX / "needs_reset.py")
    model = build_target(f"{spec}:NeedsResetLM", {"dim": 8})
    with pytest.raises(UserError) as err:
        audit(model)
    msg = str(err.value)
    assert "weights not initialized" in msg and "NeedsResetLM.reset_memory()" in msg
    assert "forward(x, mask=None)" in msg and "\n" not in msg
    assert audit(model, call=f"{spec}:run").exit_code == 0


def test_cli_kw(tmp_path):
    from hopelab.cli import app

    spec = str(FIX / "needs_reset.py")
    res = CliRunner().invoke(app, ["audit", f"{spec}:NeedsResetLM", "--kw", "dim=8", "--kw", "chunk=4",
                                   "--call", f"{spec}:run", "--seq-len", "16", "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["n_params"] < 3000  # dim 8, not 16
    res = CliRunner().invoke(app, ["audit", f"{spec}:NeedsResetLM", "--kw", "width=8"])
    assert isinstance(res.exception, UserError) and "width" in str(res.exception)


# --- parameters that only feed writes: the second call ------------------------------------------------------


def test_memory_read_on_the_next_call_is_judged_on_a_second_call():
    r = run("next_call_memory.py:build", seq_len=16)
    f = finding(r, "next_call")
    assert f.severity == "info" and f.params == ["write_proj.weight"] and r.exit_code == 0
    assert f.evidence["resets_called"] == ["NextCallMemory.reset_memory()"] and "mem" in f.evidence["keeps_state"]
    assert not r.has("dead_params")  # judged on the second call, not left as a one-call warning
    row = next(row for row in r.gradient_flow if row.component == "write_proj")
    assert row.ok and "next call" in row.status
    # the broken twin writes a memory no call reads: critical, where one call alone says only "dead"
    broken = run("next_call_memory.py:build_broken", seq_len=16)
    f = finding(broken, "write_only")
    assert f.severity == "critical" and f.params == ["write_proj.weight"] and broken.exit_code == 1
    assert "mem_next" in f.evidence["keeps_state"]
    detached = run("next_call_memory.py:build_detached", seq_len=16)
    assert finding(detached, "next_call_detached").severity == "warning" and detached.exit_code == 0


def test_returned_state_is_passed_back_for_the_second_call():
    r = run("next_call_memory.py:build_functional", seq_len=16)
    f = finding(r, "next_call")
    assert f.params == ["write_proj.weight"] and f.evidence["state_argument"] == "state" and r.exit_code == 0
    assert "returns a state (passed back as state=)" in f.evidence["keeps_state"]


def test_dead_parameters_of_a_model_without_state_stay_a_one_call_warning():
    r = run("multi_input.py:actions_ignored", input=["obs=float:8", "actions=float:3"], seq_len=16)
    assert finding(r, "dead_params").severity == "warning" and not r.has("write_only")
    assert next(c for c in r.checks if c.name == "next_call").status == "skipped"


# --- named inputs, steps of several tokens, dead inputs, names ------------------------------------------------


def test_named_inputs_reach_forward_by_keyword_and_a_call_gets_them_as_a_dict():
    named = ["obs=float:8", "actions=float:3"]
    r = run("multi_input.py:ActionModel", input=named, seq_len=16)
    assert r.exit_code == 0 and not checks_of(r, "critical") and r.settings["input"] == "obs=float:8, actions=float:3"
    dead_inputs = next(c for c in r.checks if c.name == "dead_inputs")
    assert dead_inputs.status == "pass" and "actions" in dead_inputs.summary
    r = run("multi_input.py:ActionModel", input=named, seq_len=16, call=str(FIX / "multi_input.py:run_named"))
    assert r.exit_code == 0
    with pytest.raises(UserError, match="name each one"):
        run("multi_input.py:ActionModel", input=["float:8", "actions=float:3"])
    with pytest.raises(UserError, match="float:NxD"):
        run("multi_input.py:ActionModel", input=["obs=floats:8"])


def test_ignored_input_is_named_with_its_encoder():
    r = run("multi_input.py:actions_ignored", input=["obs=float:8", "actions=float:3"], seq_len=16)
    f = finding(r, "input_ignored")
    assert f.severity == "critical" and f.evidence["input"] == "actions" and f.evidence["read_by"] == ["action_enc"]
    assert "'actions'" in f.title and set(f.params) == {"action_enc.weight", "action_enc.bias"}
    assert r.exit_code == 1


def test_tokens_per_step_folds_a_frame_of_tokens_onto_the_step_axis():
    flat = run("multi_input.py:FrameModel", input="float:8", seq_len=8)
    assert finding(flat, "causality").severity == "critical"  # patches of one frame see each other
    folded = run("multi_input.py:FrameModel", input="float:8", seq_len=8, tokens_per_step=4)
    assert folded.exit_code == 0 and not checks_of(folded, "critical")
    assert folded.settings["input"] == "float:8, 4 tokens per step"
    receptive = next(c for c in folded.checks if c.name == "receptive_field")
    assert "up to 7 positions back" in receptive.summary  # 8 steps, not 32 tokens


def test_a_state_encoder_is_not_a_memory():
    assert not is_memory_name("state_encoder.weight") and not is_memory_name("memory_proj.weight")
    assert is_memory_name("state_init") and is_memory_name("blocks.0.memory.weight") and is_memory_name("eta_proj.w")
    r = run("multi_input.py:Policy", input="float:6", seq_len=16)
    assert r.settings["memory_parameters_audited"] == 0
    assert finding(r, "receptive_field").severity == "info" and r.exit_code == 0


def test_cli_named_inputs(tmp_path):
    from hopelab.cli import app

    spec = str(FIX / "multi_input.py")
    res = CliRunner().invoke(app, ["audit", f"{spec}:ActionModel", "--kw", "act_dim=2", "--input", "obs=float:8",
                                   "--input", "actions=float:2", "--seq-len", "16", "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["settings"]["input"] == "obs=float:8, actions=float:2"
    res = CliRunner().invoke(app, ["audit", f"{spec}:FrameModel", "--input", "float:8", "--tokens-per-step", "4",
                                   "--seq-len", "8"])
    assert res.exit_code == 0, res.output


# --- budgets and imports ---------------------------------------------------------------------------------------


def test_finite_differences_stop_on_the_wall_clock_and_say_so():
    from hopelab.audit.passes.influence import bisect

    names = [f"m{i}.w" for i in range(8)]
    tested = []

    def changes(group):
        tested.append(group)
        return True

    found, note = bisect(names, changes, "the output", budget_s=0.0)
    assert len(tested) == 1 and all(found[n] == (True, "attributed by group (finite-difference budget spent)")
                                    for n in names)
    assert "stopped after 1 forwards" in note and "8 parameter(s) attributed by group" in note
    tested.clear()
    found, note = bisect(names, changes, "the output", budget_s=60.0)
    assert note == "" and all(found[n] == (True, "moving it changes the output") for n in names)
    assert len(tested) > 8  # split down to single parameters


def test_one_by_one_sweep_keeps_to_its_budget(monkeypatch):
    import itertools

    import hopelab.audit.passes.sweep as sweep

    clock = itertools.count()  # the sweep's clock: one second per reading
    monkeypatch.setattr(sweep, "perf_counter", lambda: float(next(clock)))
    r = run("shared_batch_memory.py:build", seq_len=32)  # batch-coupled: one sequence per forward
    assert any("sweep probed 14 of 16 positions one by one within its 6 s budget" in n for n in r.notes), r.notes
    assert finding(r, "batch_independence").severity == "critical"  # still judged


def test_audit_does_not_import_lightning():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom hopelab.cli import app\n"
            f"r = CliRunner().invoke(app, ['audit', {str(FIX / 'fastweight.py:build')!r}, '--seq-len', '8'])\n"
            "assert r.exit_code == 0, r.output\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_terminal_table_keeps_long_names_whole():
    r = run("multi_input.py:actions_ignored", input=["obs=float:8", "actions=float:3"], seq_len=8)
    long = "a_rather_long_component_name_that_cannot_fit_in_its_column.*"
    r.gradient_flow[0].component = long
    console = Console(width=80, record=True)
    r.render(console)
    text = console.export_text()
    assert "…" not in text
    flow = text[text.index("Gradient-flow audit"):]
    first_column = "".join(line.split("│")[1].strip() for line in flow.splitlines() if line.startswith("│"))
    assert long in first_column  # folded over several lines, never cut


def test_eta_variation_finds_a_batch_axis_behind_heads():
    from hopelab.audit.checks.eta_alpha import _variation

    per_token = torch.rand(1, 2, 6, 1, dtype=torch.float64)  # [H, B, T, 1], as titans-pytorch's to_momentum
    info = _variation([per_token], B=2)
    assert info["per_token"] and info["per_sample"] and "note" not in info
