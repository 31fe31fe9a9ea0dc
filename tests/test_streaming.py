"""Streaming (`--set segments=K`): K windows read in order with every fast state carried equal one pass over
their concatenation up to the detach points; nothing crosses between samples; CMS levels slower than a window
update; the carried state survives a checkpoint; the data and the training step line up."""

import dataclasses
import io

import numpy as np
import pytest
import torch

from hopelab.config import ModelConfig, TrainConfig
from hopelab.data.sampler import BatchSampler, StreamSampler
from hopelab.errors import UserError
from hopelab.lit.module import LitLM, lm_loss
from hopelab.lit.stream import CarriedStream, _interleave
from hopelab.models import build_model
from hopelab.models.streaming import detach_state, from_tree, read_stream, read_window, to_tree
from hopelab.probes.forward import run_probe_forward, sites_of

DT = torch.float64
V = 50
T = 8  # the window
# level 1's period (24) spans three windows and ends inside one: the carried block gradients are exercised
CFG = ModelConfig(vocab_size=V, dim=16, n_layers=2, n_heads=2, context_len=T, chunk_size=4, cms_periods=(4, 24))
CARRIERS = ["hope", "hope_no_selfmod", "hope_no_cms", "titans"]


def make(variant="hope", **overrides):
    torch.manual_seed(0)
    return build_model(variant, dataclasses.replace(CFG, **overrides)).to(DT)


def tokens(B=2, K=4, seed=1):
    return torch.randint(0, V, (B, K * T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("objective", ["reconstruct", "kv"])
@pytest.mark.parametrize("variant", CARRIERS)
def test_stream_of_windows_equals_one_pass_over_the_concatenation(variant, objective):
    model = make(variant, cms_objective=objective).eval()
    x = tokens()
    with torch.no_grad():
        full = model(x)  # [B, K·T, V]
        streamed = torch.cat(list(read_stream(model, x, T)), dim=1)
    assert torch.allclose(streamed, full, atol=1e-12, rtol=0)


@pytest.mark.parametrize("variant", ["hope", "titans"])
def test_gradients_equal_within_each_window_and_stop_at_its_start(variant):
    """Window j's loss, streamed: its parameter gradients equal those of window j read from the state of one
    pass over windows 0..j−1 (detached), and nothing of it reaches the meta-learned initial states (the carried
    state is a constant), which the same window read inside the undetached concatenation does reach."""
    model = make(variant)
    x, y = tokens(seed=1), tokens(seed=2)
    j = 3
    params = dict(model.named_parameters())

    def grads(loss):
        gs = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        return {n: g for n, g in zip(params, gs)}

    state = None
    for i, window in enumerate(x.split(T, dim=1)[: j + 1]):
        logits, state_next = read_window(model, window, state)
        if i < j:
            state = state_next
    streamed = grads(lm_loss(logits, y[:, j * T : (j + 1) * T]))
    _, prefix_state = model(x[:, : j * T], return_state=True)  # one pass over the prefix
    ref_logits = model(x[:, j * T : (j + 1) * T], state=detach_state(prefix_state))
    reference = grads(lm_loss(ref_logits, y[:, j * T : (j + 1) * T]))
    whole = grads(lm_loss(model(x[:, : (j + 1) * T])[:, j * T :], y[:, j * T : (j + 1) * T]))
    inits = {n for n in params if "init" in n}  # the meta-learned initial states
    assert inits
    for n in params:
        if streamed[n] is None or reference[n] is None:
            assert streamed[n] is None and reference[n] is None, n
            continue
        assert torch.allclose(streamed[n], reference[n], atol=1e-12, rtol=1e-9), n
    for n in inits:
        assert streamed[n] is None or not streamed[n].any(), n
    assert any(whole[n] is not None and whole[n].abs().max() > 1e-8 for n in inits)


@pytest.mark.parametrize("variant", [*CARRIERS, "hope_attention", "transformer"])
def test_no_state_crosses_from_one_sample_to_another(variant):
    """Changing sample 0's first window changes nothing of the other samples in any window, and (where a state
    is carried) changes sample 0's later windows."""
    model = make(variant).eval()
    x = tokens(B=3)
    x2 = x.clone()
    x2[0, :T] = (x2[0, :T] + 3) % V
    with torch.no_grad():
        base, out = (torch.cat(list(read_stream(model, t, T)), dim=1) for t in (x, x2))
    assert torch.equal(out[1:], base[1:])
    later = out[0, T:], base[0, T:]
    assert torch.equal(*later) == (variant == "transformer")


def test_hope_attention_carries_only_its_cms():
    """Attention sees one window: without a CMS a carried state changes nothing; with one, the CMS persists."""
    x = tokens()
    for use_cms in (False, True):
        model = make("hope_attention", use_cms=use_cms).eval()
        with torch.no_grad():
            _, state = model(x[:, :T], return_state=True)
            assert all(b.mixer is None for b in state.blocks)
            carried, fresh = model(x[:, T : 2 * T], state=state), model(x[:, T : 2 * T])
        assert torch.equal(carried, fresh) == (not use_cms)


def test_a_level_slower_than_a_window_updates_once_per_period():
    """Level 1 (period 24 = 3 windows) keeps its weights until token 24, then moves; the carried block
    gradients are empty exactly at the block boundaries."""
    model = make().eval()
    x = tokens(K=6)
    ups, accs, state = [], [], None
    with torch.no_grad():
        for window in x.split(T, dim=1):
            _, state = read_window(model, window, state)
            level = state.blocks[0].cms[1]
            ups.append(level.up)
            accs.append(level.acc is None)
    moved = [not torch.equal(a, b) for a, b in zip(ups, ups[1:])]  # between windows ending at 8k and 8(k+1)
    assert moved == [False, True, False, False, True]  # updates at tokens 24 and 48
    assert accs == [False, False, True, False, False, True]


def test_carried_state_round_trips_through_a_weights_only_checkpoint():
    model = make().eval()
    x = tokens(K=3)
    with torch.no_grad():
        _, state = read_window(model, x[:, :T], None)
        _, state = read_window(model, x[:, T : 2 * T], state)
        buf = io.BytesIO()
        torch.save(to_tree(state), buf)
        buf.seek(0)
        loaded = from_tree(torch.load(buf, weights_only=True))
        want, got = (read_window(model, x[:, 2 * T :], s)[0] for s in (state, loaded))
    assert type(loaded) is type(state) and loaded.pos == 2 * T
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="outside hopelab"):
        from_tree({"__state_class__": "os.system"})


def test_stream_sampler_reads_consecutive_windows_of_one_stretch():
    data = np.arange(10_000, dtype=np.uint16)
    K = 3
    streams = BatchSampler(data, K * T, batch_size=4, seed=7)
    sampler = StreamSampler(streams, T, K)
    for group in (0, 5):
        xs, ys = zip(*(sampler.batch(group * K + j) for j in range(K)))
        x, y = streams.batch(group)
        assert torch.equal(torch.cat(xs, 1), x) and torch.equal(torch.cat(ys, 1), y)
        assert all(t.shape == (4, T) for t in xs)
    assert not torch.equal(sampler.batch(0)[0], sampler.batch(K)[0])  # a new stream every K steps


def test_carried_stream_hands_each_step_the_previous_steps_state_and_refuses_a_gap():
    """What LitLM.training_step does with CarriedStream equals read_stream; a step that continues a stream
    without its state is an error (a resume that lost it), never a silent restart."""
    model = make().eval()
    x = tokens(K=3)
    carried = CarriedStream(3)
    with torch.no_grad():
        want = list(read_stream(model, x, T))
        for j, window in enumerate(x.split(T, dim=1)):
            got, new = read_window(model, window, carried.take(j, 0, 1, torch.device("cpu")))
            carried.put(j, new)
            assert torch.equal(got, want[j])
    assert carried.state is None  # a stream's last window leaves nothing
    with pytest.raises(RuntimeError, match="continues a stream"):
        carried.take(4, 0, 1, torch.device("cpu"))


def test_segments_need_whole_chunks_per_window():
    with pytest.raises(UserError, match="multiple of chunk_size"):
        LitLM("hope", dataclasses.replace(CFG, context_len=10), TrainConfig(segments=2))
    LitLM("transformer", dataclasses.replace(CFG, context_len=10), TrainConfig(segments=2))  # no chunks


def test_checkpoint_rows_interleave_as_the_ranks_shard_the_batch():
    """Rank r holds global rows r::world; gathered [world, b, ...] -> global order, and back."""
    world, rows = 2, torch.arange(6.0).view(6, 1)
    gathered = torch.stack([rows[r::world] for r in range(world)])  # [world, b, 1]
    assert torch.equal(_interleave(gathered), rows)


def test_probe_forward_reads_a_stream_and_traces_levels_slower_than_a_window():
    """The probes see the stream's last window (logits, targets, hooks) after the windows before it; the trace
    covers the whole stream, so level 1 (period 24 = 3 windows) is recorded at its update, token 24."""
    model = make().eval()
    x, y = tokens(K=4), tokens(K=4, seed=2)
    fwd = run_probe_forward(model, sites_of(model), x, y)
    with torch.no_grad():
        want = list(read_stream(model, x, T))[-1]
    assert torch.allclose(fwd.logits, want, atol=1e-12, rtol=0) and torch.equal(fwd.targets, y[:, -T:])
    assert all(h.shape[1] == T for h in fwd.hooks.values())
    assert sorted(r.position for r in fwd.records if r.key == "blocks.0.cms.levels.1") == [24]
    assert max(r.position for r in fwd.records if r.key == "blocks.0.cms.levels.0") == 4 * T


@pytest.mark.parametrize("segments", [1, 3])
def test_the_training_step_runs_the_model_once_on_the_carried_state(segments):
    """LitLM.training_step itself: each step's loss is its window's loss read from the state the previous step
    left (segments 3; with 1, every window from a fresh state), from one forward of the model per step."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    lit = LitLM("hope", CFG, TrainConfig(segments=segments)).to(DT)
    x, y = tokens(K=3), tokens(K=3, seed=2)
    windows = list(zip(x.split(T, dim=1), y.split(T, dim=1)))
    with torch.no_grad():
        if segments > 1:
            want = [lm_loss(logits, yw) for logits, (_, yw) in zip(read_stream(lit.model, x, T), windows)]
        else:
            want = [lm_loss(lit.model(xw), yw) for xw, yw in windows]
    calls = []
    lit.model.register_forward_hook(lambda *args: calls.append(1))
    for j, (xw, yw) in enumerate(windows):
        lit._trainer = SimpleNamespace(global_rank=0, world_size=1, global_step=j)
        got = lit.training_step((torch.tensor(j), xw, yw), j)["train_loss"]
        assert torch.allclose(got, want[j], rtol=0, atol=1e-12), (j, got, want[j])
    assert len(calls) == len(windows)


@pytest.mark.parametrize("variant", ["hope", "hope_attention"])
def test_cms_writes_off_from_the_window_freezes_only_the_persistent_levels(variant):
    """cms_writes_off_from_8 (listed for CFG: level 1's period 24 ≥ the 8-token window): over a stream, level 1
    keeps its initial weights while level 0 (period 4) writes as trained."""
    from hopelab.interventions import applicable_switches, switched

    model = make(variant).eval()
    assert "cms_writes_off_from_8" in applicable_switches(model)
    assert "cms_writes_off_from_8" in applicable_switches(make(variant, cms_periods=(4, 8)))
    assert "cms_writes_off_from_8" not in applicable_switches(make(variant, cms_periods=(2, 4)))
    x = tokens(K=4)
    runs = {}
    with torch.no_grad():
        for switch in ("none", "cms_writes_off_from_8"):
            state = None
            with switched(model, switch):
                for window in x.split(T, dim=1):
                    _, state = read_window(model, window, state)
            runs[switch] = state.blocks
        init = [model.blocks[b].cms.levels[1].initial_state(x.shape[0]) for b in (0, 1)]
    off, on = runs["cms_writes_off_from_8"], runs["none"]
    for block in (0, 1):
        assert torch.equal(off[block].cms[1].up, init[block].up)  # frozen
        assert not torch.equal(on[block].cms[1].up, off[block].cms[1].up)  # it does write when not frozen
    assert torch.equal(off[0].cms[0].up, on[0].cms[0].up)  # level 0 of block 0 is upstream of what is frozen
    assert not torch.equal(off[1].cms[0].up, on[1].cms[0].up)  # block 1's level 0 writes what it reads


@pytest.mark.parametrize("variant", ["hope", "hope_attention", "transformer"])
def test_a_probe_set_of_streams_is_read_as_trained(variant):
    """position_losses of a stream [B, K·T] equals its windows read in order with the state carried: for hope
    one pass over the stream, for hope_attention attention within each window and the CMS carried, for the
    Transformer each window on its own. A switch acts over the whole stream."""
    from hopelab.interventions import evaluate_switches, position_losses

    model = make(variant).eval()
    x, y = tokens(K=4), tokens(K=4, seed=2)
    with torch.no_grad():
        got = position_losses(model, x, y)
        carried = torch.cat(list(read_stream(model, x, T)), dim=1)
        fresh = torch.cat([model(w) for w in x.split(T, dim=1)], dim=1)
    ce = torch.nn.functional.cross_entropy
    assert got.shape == (2, 4 * T)
    assert torch.allclose(got, ce(carried.float().transpose(1, 2), y, reduction="none"), atol=1e-6, rtol=0)
    stateless = variant == "transformer"
    assert torch.allclose(got, ce(fresh.float().transpose(1, 2), y, reduction="none"), atol=1e-6) == stateless
    if stateless:
        return
    losses = evaluate_switches(model, (x, y), ["cms_writes_off_from_8"])
    first_update = 24  # level 1 first writes at token 24: until then the switch changes nothing
    assert torch.equal(losses["none"][:, :first_update], losses["cms_writes_off_from_8"][:, :first_update])
    assert not torch.equal(losses["none"][:, first_update:], losses["cms_writes_off_from_8"][:, first_update:])


def test_a_streamed_run_probes_interventions_on_streams():
    """The intervene probe's set is STREAM_SEQUENCES streams of K windows when the run streams, 64 windows
    otherwise."""
    from hopelab.interventions import PROBE_SEQUENCES, STREAM_SEQUENCES
    from hopelab.lit.datamodule import StepDataModule

    class Data:  # the sampler interface over a range of token ids
        def sampler(self, split, length, batch, seed):
            return BatchSampler(np.arange(1000) % V, length, batch, seed)

    for segments, want in ((5, (STREAM_SEQUENCES, 5 * T)), (1, (PROBE_SEQUENCES, T))):
        dm = StepDataModule(Data(), T, batch_size=2, seed=0, val_batches=1, probe_seed=3, segments=segments)
        x, y = dm.probe_set
        assert x.shape == y.shape == want
        assert torch.equal(x[:, 1:], y[:, :-1])  # next-token targets across the window boundaries too
