"""Synthetic recall tasks (hopelab.data.synthetic), the recall probe, and the answer-position loss mask."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hopelab.data import prepare
from hopelab.data.synthetic import (
    IGNORE_INDEX,
    MQAR,
    SEP,
    Copy,
    SyntheticSampler,
    canonical,
    parse_synthetic,
)
from hopelab.errors import UserError
from hopelab.lit.module import lm_loss
from hopelab.probes.recall import answer_distances, recall_rows


def sequences(task, T: int, n_batches: int, batch_size: int = 64, seed: int = 0, split: str = "train"):
    """n_batches * batch_size sequences: tokens [n, T+1] and answer masks [n, T]."""
    sampler = SyntheticSampler(task, T, batch_size, seed, split)
    drawn = [sampler.draw(seed, step) for step in range(n_batches)]
    return np.concatenate([s for s, _ in drawn]), np.concatenate([m for _, m in drawn])


# ---------------------------------------------------------------------------------------------- generator


@pytest.mark.parametrize("queries", [6, 19])
def test_every_query_is_answered_by_the_value_paired_with_its_key_earlier_in_the_sequence(queries):
    """queries <= pairs: each key asked at most once; more: every key asked 2 or 3 times (19 of 8 pairs)."""
    task = MQAR(pairs=8, vocab=64, queries=queries)
    seq, mask = sequences(task, 64, 4)
    N = task.pairs
    for row, answers in zip(seq, mask):
        keys, values = row[0 : 2 * N : 2], row[1 : 2 * N : 2]
        assert len(set(keys)) == N and len(set(values)) == N and not set(keys) & set(values)
        where = np.flatnonzero(answers)
        assert len(where) == task.n_queries and (where >= 2 * N).all()
        counts = np.unique(row[where], return_counts=True)[1]
        if queries <= N:
            assert (counts == 1).all()  # each key asked at most once
        else:
            assert len(counts) == N and set(counts) <= {queries // N, -(-queries // N)}  # balanced rounds
        for t in where:
            j = int(np.flatnonzero(keys == row[t])[0])
            assert row[t + 1] == values[j]  # the target at the query is its key's value
        # everything in the query region but the queries is filler
        rest = np.ones(len(row), bool)
        rest[: 2 * N] = False
        rest[where] = rest[where + 1] = False
        assert (row[rest] == 0).all()


def test_the_targets_carry_the_answers_only():
    sampler = prepare("synthetic:mqar?pairs=4&len=32&vocab=32").sampler("train", 32, 8, seed=0)
    x, y = sampler.batch(3)
    seq, mask = sampler.draw(0, 3)
    assert torch.equal(x, torch.from_numpy(seq[:, :-1]))
    assert torch.equal(y[torch.from_numpy(mask)], torch.from_numpy(seq[:, 1:][mask]))
    assert (y[~torch.from_numpy(mask)] == IGNORE_INDEX).all()


def _inclusion_probabilities(w: np.ndarray, k: int) -> np.ndarray:
    """P(slot s is among k slots drawn one after another without replacement, each ∝ w among those left)."""
    p = np.zeros(len(w))
    for order in itertools.permutations(range(len(w)), k):
        prob, left = 1.0, w.sum()
        for s in order:
            prob *= w[s] / left
            left -= w[s]
        p[list(order)] += prob
    return p


@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_query_slots_and_distances_follow_the_stated_law(alpha):
    task = MQAR(pairs=2, vocab=16, alpha=alpha)  # len 13: 5 query slots, 2 queries
    T, N = 13, 2
    seq, mask = sequences(task, T, 50, batch_size=100)  # 5000 sequences
    slots = (np.nonzero(mask)[1] - 2 * N) // 2
    freq = np.bincount(slots, minlength=task.slots(T)) / len(seq)
    want = _inclusion_probabilities(task.slot_weights(T), N)
    sigma = np.sqrt(want * (1 - want) / len(seq))
    assert np.all(np.abs(freq - want) < 4 * sigma), (freq, want)
    if alpha > 0:
        assert freq[0] > 2 * freq[-1]  # a power law: near slots much more often than far ones
    # the distance back to the key: 2N + 2s − 2j, as answer_distances measures it
    x = torch.from_numpy(seq[:, :-1])
    y = torch.where(torch.from_numpy(mask), torch.from_numpy(seq[:, 1:]), IGNORE_INDEX)
    d = answer_distances(x, y)
    rows, ts = np.nonzero(mask)
    j = np.array([np.flatnonzero(seq[r, 0 : 2 * N : 2] == seq[r, t])[0] for r, t in zip(rows, ts)])
    assert np.array_equal(d[mask].numpy(), ts - 2 * j)
    # keys are asked uniformly: the pair index is independent of the slot
    assert abs(np.mean(j) - (N - 1) / 2) < 0.05


def test_two_seeds_and_the_held_out_stream_give_disjoint_sequences():
    task = MQAR(pairs=4, vocab=32)
    a, _ = sequences(task, 32, 10, seed=0)
    again, _ = sequences(task, 32, 10, seed=0)
    b, _ = sequences(task, 32, 10, seed=1)
    held, _ = sequences(task, 32, 10, seed=0, split="val")
    assert np.array_equal(a, again)  # a pure function of (seed, step)
    rows = [{r.tobytes() for r in s} for s in (a, b, held)]
    assert all(len(r) == len(a) for r in rows)
    for one, other in itertools.combinations(rows, 2):
        assert not one & other


def test_copy_repeats_a_random_span_and_answers_on_the_second_copy():
    task = Copy(span=6, vocab=10_000)  # a large vocabulary: no pair repeats inside a span
    seq, mask = sequences(task, 16, 2, batch_size=32)
    L = 6
    assert (seq[:, 0] == SEP).all() and (seq[:, L + 1] == SEP).all()
    assert np.array_equal(seq[:, 1 : L + 1], seq[:, L + 2 : 2 * L + 2])
    assert np.array_equal(np.flatnonzero(mask[0]), np.arange(L + 1, 2 * L + 1))
    x = torch.from_numpy(seq[:, :-1])
    y = torch.where(torch.from_numpy(mask), torch.from_numpy(seq[:, 1:]), IGNORE_INDEX)
    assert (answer_distances(x, y)[torch.from_numpy(mask)] == L + 1).all()


def test_specs_parse_canonically_and_bad_ones_are_one_line_errors():
    a = parse_synthetic("synthetic:mqar?pairs=16&len=128")
    b = parse_synthetic("synthetic:mqar?len=128&vocab=256&pairs=16")
    assert a == b and canonical(a) == canonical(b) and a.pairs == 16 and a.len == 128
    assert parse_synthetic("synthetic:copy").span is None
    data = prepare("synthetic:mqar?pairs=16&len=128")
    assert data.vocab_size == 256 and data.context_len == 128
    for bad, says in [
        ("synthetic:nope", "unknown synthetic task"),
        ("synthetic:mqar?pairs=x", "not an integer"),
        ("synthetic:mqar?colour=3", "unknown parameter"),
        ("synthetic:mqar?pairs=64&len=128", "leaves no room"),
        ("synthetic:mqar?pairs=40&vocab=64", "too small"),
        ("synthetic:copy?span=20&len=16", "does not fit"),
    ]:
        with pytest.raises(UserError, match=says):
            parse_synthetic(bad).check(16)
    with pytest.raises(UserError, match="context is 64"):
        data.sampler("train", 64, 4)


# ---------------------------------------------------------------------------------------------- metric + loss


def test_accuracy_counts_answer_positions_only_on_a_hand_made_example():
    # one sequence "a b c a b c a d": answers at t = 3 (a -> b, distance 3), t = 6 (a -> d: never seen, no
    # distance) and t = 4 (b -> c, distance 3); t = 5 (c -> a) is not an answer
    a, b, c, d = 2, 3, 4, 5
    x = torch.tensor([[a, b, c, a, b, c, a]])
    y = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, b, c, IGNORE_INDEX, d]])
    assert answer_distances(x, y).tolist() == [[-1, -1, -1, 3, 3, -1, -1]]
    predicted = torch.tensor([[0, 0, 0, b, a, a, d]])  # right at t = 3 and t = 6, wrong at t = 4; t = 5 right
    logits = F.one_hot(predicted, 8).float() * 5  # [1, T, V]
    rows = recall_rows(logits, y, answer_distances(x, y))
    got = {(r["metric"], r.get("position")): r["value"] for r in rows}
    assert got[("accuracy", None)] == pytest.approx(2 / 3)  # the right t = 5 is not counted
    assert got[("answers", None)] == 3
    assert got[("accuracy", 2)] == pytest.approx(1 / 2)  # distance 3 lies in bucket [2, 4)
    assert got[("answers", 2)] == 2
    want_loss = F.cross_entropy(logits[0, [3, 4, 6]], torch.tensor([b, c, d]))
    assert got[("answer_loss", None)] == pytest.approx(float(want_loss))


def test_the_loss_is_taken_on_answer_positions_only_and_unchanged_on_a_corpus():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    y = torch.randint(0, 11, (2, 6), generator=g)
    plain = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    assert torch.equal(lm_loss(logits, y), plain)  # no target masked: the corpus path's number
    masked = y.clone()
    masked[:, :4] = IGNORE_INDEX
    want = F.cross_entropy(logits[:, 4:].flatten(0, 1), y[:, 4:].flatten())
    assert torch.allclose(lm_loss(logits, masked), want)
    assert (lm_loss(logits, masked, reduction="none").view(2, 6)[:, :4] == 0).all()


# ---------------------------------------------------------------------------------------------- wiring


def test_a_run_on_a_synthetic_task_takes_its_length_and_vocabulary_and_writes_recall_rows(tmp_path):
    import pyarrow.parquet as pq

    from hopelab.run import RunDir, RunSpec, train_one
    from hopelab.run.identity import spec_identity

    spec = RunSpec("transformer", "tiny", study="syn", data="synthetic:mqar?pairs=2&len=24&vocab=16", out=str(tmp_path),
                   steps=2, train_overrides={"ckpt_every": 2, "val_batches": 1, "batch_size": 2})
    state = train_one(spec, progress=lambda *a: None)
    assert state.status == "done"
    run = RunDir(spec.run_dir)
    model = json.loads(run.config.read_text())["model"]
    assert (model["context_len"], model["vocab_size"]) == (24, 16)
    rows = pq.read_table(run.probes / "recall-step000002.parquet").to_pylist()
    overall = [r for r in rows if r["metric"] == "answers" and r["position"] is None]
    assert overall[0]["value"] == 2 * 2  # batch 2 x queries 2: answer positions only
    reordered = RunSpec(**{**spec.__dict__, "data": "synthetic:mqar?vocab=16&len=24&pairs=2&alpha=1"})
    assert spec_identity(reordered) == spec_identity(spec)


def test_a_study_cell_names_its_own_synthetic_data():
    from hopelab.study import Cell, Study
    from hopelab.study.plan import plan_runs

    study = Study("syn", "x", [Cell("transformer", tag="p4", data="synthetic:mqar?pairs=4&len=64"),
                               Cell("titans")], scales=("tiny",))
    runs = plan_runs(study, data="corpus.txt")
    assert [r.spec.data for r in runs] == ["synthetic:mqar?pairs=4&len=64", "corpus.txt"]
    assert [r.context_len for r in runs] == [64, 128]
    with pytest.raises(UserError, match="synthetic task"):
        Study("bad", "x", [Cell("hope", data="corpus.txt")], scales=("tiny",))
    with pytest.raises(UserError, match="leaves no room"):
        Study("bad", "x", [Cell("hope", data="synthetic:mqar?pairs=64&len=64")], scales=("tiny",))


@pytest.mark.slow
def test_a_small_transformer_learns_an_easy_recall_task(tmp_path):
    """One pair, short sequences: the value to recall is random in every sequence, so only reading it back
    from the context scores; through train_one (masked loss) to the recall probe on held-out sequences.
    (Measured: chance ~1/128 at step 0, 100% by step 50; more pairs take thousands of steps, the study's job.)"""
    import pyarrow.parquet as pq

    from hopelab.run import RunDir, RunSpec, train_one

    spec = RunSpec("transformer", "tiny", study="learn", data="synthetic:mqar?pairs=1&len=16&vocab=256",
                   out=str(tmp_path), steps=100, probes=True,
                   train_overrides={"lr": 3e-3, "warmup_steps": 10, "schedule": "cosine", "batch_size": 32,
                                    "ckpt_every": 100, "val_batches": 1})
    assert train_one(spec, progress=lambda *a: None).status == "done"
    probes = RunDir(spec.run_dir).probes

    def accuracy(step: int) -> float:
        rows = pq.read_table(probes / f"recall-step{step:06d}.parquet").to_pylist()
        return next(r["value"] for r in rows if r["metric"] == "accuracy" and r["position"] is None)

    assert accuracy(0) < 0.1
    assert accuracy(100) >= 0.9


def test_the_surprise_probe_takes_cross_entropy_quantiles_over_answer_positions_only():
    from hopelab.config import ModelConfig
    from hopelab.models import build_model
    from hopelab.probes.forward import ProbeStep
    from hopelab.probes.surprise import SurpriseProbe

    torch.manual_seed(0)
    model = build_model("transformer", ModelConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, context_len=32))
    batch = prepare("synthetic:mqar?pairs=4&len=32&vocab=32").sampler("val", 32, 4).batch(0)
    rows = {r["metric"]: r["value"] for r in SurpriseProbe().collect(ProbeStep(model, 0, batch))}
    with torch.no_grad():
        want = lm_loss(model(batch[0]), batch[1])  # the mean over the 16 answers
    assert rows["ce_mean"] == pytest.approx(float(want), rel=1e-5) and rows["ce_min"] > 0


@pytest.mark.parametrize("variant", ["hope", "titans", "transformer"])
def test_the_recall_probe_measures_accuracy_again_with_each_write_switch_it_applies_to(variant):
    from hopelab.config import ModelConfig
    from hopelab.interventions import applies, switched
    from hopelab.models import build_model
    from hopelab.probes.forward import ProbeStep
    from hopelab.probes.recall import WRITE_SWITCHES, RecallProbe, recall_accuracy

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32, dim=16, n_layers=1, n_heads=2, context_len=32, chunk_size=8, cms_periods=(8,))
    model = build_model(variant, cfg)
    batch = prepare("synthetic:mqar?pairs=4&len=32&vocab=32").sampler("val", 32, 4).batch(0)
    rows = RecallProbe().collect(ProbeStep(model, 0, batch))
    as_trained = [r for r in rows if r.get("component") is None]
    assert as_trained == recall_accuracy(model, batch)  # the switches leave the model as it was
    expected = [s for s in WRITE_SWITCHES if applies(model, s)]
    assert {r.get("component") for r in rows} - {None} == set(expected)
    assert (expected == []) == (variant == "transformer")
    for name in expected:
        with switched(model, name):
            want = recall_accuracy(model, batch)
        got = [{k: v for k, v in r.items() if k != "component"} for r in rows if r.get("component") == name]
        assert got == want
    loss = {r.get("component"): r["value"] for r in rows if r["metric"] == "answer_loss"}
    if "all_writes_off" in loss:  # the writes change what the model predicts
        assert loss["all_writes_off"] != loss[None]
