"""Synthetic in-context recall tasks: a data source beside corpora, generated from a seed, no files.

    data = prepare("synthetic:mqar?pairs=16&len=128")       # what `--data synthetic:...` gives a run
    x, y = data.sampler("train", 128, batch_size=8, seed=0).batch(step)   # y = IGNORE_INDEX off the answers

Tasks (token 0 is filler, token 1 a separator; the rest of the vocabulary is the task's):

  mqar   multi-query associative recall (the zoology benchmark's layout). `pairs` key-value pairs
         k1 v1 k2 v2 ... (keys and values distinct, from disjoint halves of the vocabulary), then the query
         region: slots of two tokens, filler "0 0" except at `queries` slots that hold "k v" for an earlier
         key (with queries <= pairs each key is queried at most once; with more, every key is asked
         ⌊queries/pairs⌋ or ⌈queries/pairs⌉ times, so a later query may also copy an earlier query's answer).
         The answer is v, predicted at the query key. Law of the query distances: the query slots are drawn
         one after another without replacement, slot s (0 = right after the pairs) with probability
         ∝ (s + 1)^-alpha among the slots left; the keys asked there are a uniformly random choice of the
         pairs. A query at slot s of pair j sits 2·pairs + 2·s − 2·j tokens after its key.
  copy   [sep] span [sep] span [filler...]: a random span of `span` tokens, then the same span; the answers
         are the second span's tokens.

Parameters (`synthetic:TASK?key=value&...`): mqar: pairs (8), len, vocab (256), alpha (1.0), queries (= pairs);
copy: span (the longest that fits), len, vocab (256). `len` is the number of input tokens of a sequence; it
fixes the run's context length (like the vocabulary); without it the sequences take the model's context length.

Targets y are the inputs shifted left by one, set to IGNORE_INDEX (torch's cross-entropy ignore index) at
every position that is not an answer, so the loss and the accuracy count answer positions only. Training
sequences are a pure function of (run seed, step); the held-out sequences (split "val": the val batches
and the probe batch) come from another seed stream, the same for every run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import numpy as np

from hopelab.errors import UserError

PREFIX = "synthetic:"
IGNORE_INDEX = -100  # a target that carries no loss: torch.nn.functional.cross_entropy's default ignore_index
FILLER, SEP = 0, 1
FIRST_TASK_TOKEN = 2
_STREAMS = {"train": 0, "val": 1}  # the held-out set is its own seed stream: SeedSequence([stream, seed, step])


def is_synthetic(data: str | None) -> bool:
    return isinstance(data, str) and data.startswith(PREFIX)


@dataclass(frozen=True)
class MQAR:
    """Multi-query associative recall; see the module docstring for the layout and the distance law."""

    name: ClassVar[str] = "mqar"
    pairs: int = 8
    len: int | None = None
    vocab: int = 256
    alpha: float = 1.0
    queries: int | None = None  # None: every pair is queried once; more than pairs: keys asked again

    @property
    def n_keys(self) -> int:
        return (self.vocab - FIRST_TASK_TOKEN) // 2  # keys [2, 2 + n_keys), values [2 + n_keys, vocab)

    @property
    def n_queries(self) -> int:
        return self.pairs if self.queries is None else self.queries

    def slots(self, T: int) -> int:
        """Query slots of a sequence of T input tokens (T + 1 tokens with the last target)."""
        return (T + 1 - 2 * self.pairs) // 2

    def slot_weights(self, T: int) -> np.ndarray:
        """Unnormalised probability of each query slot: (s + 1)^-alpha."""
        return np.arange(1, self.slots(T) + 1, dtype=np.float64) ** -self.alpha

    def check(self, T: int) -> None:
        where = f"synthetic:mqar with pairs={self.pairs}"
        if self.pairs < 1 or self.n_queries < 1:
            raise UserError(f"{where}: pairs and queries must be >= 1")
        if self.n_keys < self.pairs or self.vocab - FIRST_TASK_TOKEN - self.n_keys < self.pairs:
            raise UserError(f"{where}: vocab={self.vocab} is too small (needs >= {2 * self.pairs + 2})")
        if self.slots(T) < self.n_queries:
            need = 2 * self.pairs + 2 * self.n_queries - 1
            raise UserError(f"{where}: len={T} leaves no room for {self.n_queries} queries (needs len >= {need})")
        if not self.alpha >= 0:
            raise UserError(f"{where}: alpha must be >= 0, got {self.alpha}")

    def generate(self, rng: np.random.Generator, n: int, T: int) -> tuple[np.ndarray, np.ndarray]:
        """n sequences of T + 1 tokens [n, T+1] and the answer mask of their inputs [n, T]."""
        N, Q, S = self.pairs, self.n_queries, self.slots(T)
        rows = np.arange(n)[:, None]  # [n, 1]
        keys = np.argsort(rng.random((n, self.n_keys)), axis=1)[:, :N] + FIRST_TASK_TOKEN  # [n, N] distinct
        n_values = self.vocab - FIRST_TASK_TOKEN - self.n_keys
        values = np.argsort(rng.random((n, n_values)), axis=1)[:, :N] + FIRST_TASK_TOKEN + self.n_keys  # [n, N]
        seq = np.full((n, T + 1), FILLER, dtype=np.int64)
        seq[:, 0 : 2 * N : 2], seq[:, 1 : 2 * N : 2] = keys, values
        # Gumbel top-Q of log w: exactly successive sampling without replacement with probability ∝ w
        scores = np.log(self.slot_weights(T)) + rng.gumbel(size=(n, S))  # [n, S]
        slot = np.argsort(-scores, axis=1)[:, :Q]  # [n, Q]
        rounds = -(-Q // N)  # each round asks every pair once, in a random order
        pair = np.concatenate([np.argsort(rng.random((n, N)), axis=1) for _ in range(rounds)], axis=1)[:, :Q]
        at = 2 * N + 2 * slot  # [n, Q] position of the query key
        seq[rows, at], seq[rows, at + 1] = keys[rows, pair], values[rows, pair]
        mask = np.zeros((n, T), dtype=bool)
        mask[rows, at] = True  # the input is the query key, the target its value
        return seq, mask


@dataclass(frozen=True)
class Copy:
    """[sep] span [sep] span [filler...]: the second span is the answer."""

    name: ClassVar[str] = "copy"
    span: int | None = None  # None: the longest that fits
    len: int | None = None
    vocab: int = 256

    def span_len(self, T: int) -> int:
        return self.span if self.span is not None else (T + 1) // 2 - 1

    def check(self, T: int) -> None:
        L = self.span_len(T)
        if L < 1:
            raise UserError(f"synthetic:copy: span must be >= 1, got {L}")
        if 2 * L + 2 > T + 1:
            raise UserError(f"synthetic:copy: span={L} does not fit twice in len={T} (needs len >= {2 * L + 1})")
        if self.vocab <= FIRST_TASK_TOKEN:
            raise UserError(f"synthetic:copy: vocab must be > {FIRST_TASK_TOKEN}, got {self.vocab}")

    def generate(self, rng: np.random.Generator, n: int, T: int) -> tuple[np.ndarray, np.ndarray]:
        L = self.span_len(T)
        span = rng.integers(FIRST_TASK_TOKEN, self.vocab, size=(n, L))  # [n, L]
        seq = np.full((n, T + 1), FILLER, dtype=np.int64)
        seq[:, 0] = seq[:, L + 1] = SEP
        seq[:, 1 : L + 1] = seq[:, L + 2 : 2 * L + 2] = span
        mask = np.zeros((n, T), dtype=bool)
        mask[:, L + 1 : 2 * L + 1] = True  # inputs sep, s_0 .. s_{L-2} -> targets s_0 .. s_{L-1}
        return seq, mask


Task = MQAR | Copy
TASKS: dict[str, type] = {"mqar": MQAR, "copy": Copy}


def parse_synthetic(spec: str) -> Task:
    """"synthetic:mqar?pairs=16&len=128" -> MQAR(pairs=16, len=128); bad names and values are a UserError."""
    if not is_synthetic(spec):
        raise UserError(f"{spec!r} is not a synthetic task (expected {PREFIX}TASK?key=value&...)")
    name, _, query = spec[len(PREFIX) :].partition("?")
    if name not in TASKS:
        raise UserError(f"unknown synthetic task {name!r}; choose one of: {', '.join(TASKS)}")
    cls = TASKS[name]
    kinds = {f.name: (float if f.type == "float" else int) for f in fields(cls)}
    values: dict[str, Any] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise UserError(f"{spec}: expected key=value pairs joined by '&'") from None
    for key, raw in pairs:
        if key not in kinds:
            raise UserError(f"{spec}: unknown parameter {key!r} of {name}; valid: {', '.join(kinds)}")
        try:
            values[key] = kinds[key](raw)
        except ValueError:
            kind = "a number" if kinds[key] is float else "an integer"
            raise UserError(f"{spec}: {key}={raw!r} is not {kind}") from None
    task = cls(**values)
    if task.len is not None:
        task.check(task.len)  # fail before anything runs
    return task


def canonical(task: Task) -> str:
    """The one spelling of a task, every parameter given: the run identity and the cache-free data key."""
    params = "&".join(f"{f.name}={getattr(task, f.name)}" for f in fields(task) if getattr(task, f.name) is not None)
    return f"{PREFIX}{task.name}?{params}"


def data_context_len(data: str | None) -> int | None:
    """The context length a data source fixes (a synthetic task with `len`), else None."""
    return parse_synthetic(data).len if is_synthetic(data) else None


class SyntheticSampler:
    """BatchSampler's interface over a task: batch(step) is a pure function of (stream, seed, step)."""

    def __init__(self, task: Task, context_len: int, batch_size: int, seed: int = 0, split: str = "train") -> None:
        if split not in _STREAMS:
            raise UserError(f"unknown split '{split}' (choose train or val)")
        if batch_size < 1 or seed < 0:
            raise UserError(f"batch_size ({batch_size}) must be >= 1 and seed ({seed}) >= 0")
        task.check(context_len)
        self.task, self.context_len, self.batch_size, self.seed, self.split = task, context_len, batch_size, seed, split

    def draw(self, seed: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [B, T+1], answer mask [B, T]) of batch `step` of `seed` in this split's stream."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([_STREAMS[self.split], seed, step])))
        return self.task.generate(rng, self.batch_size, self.context_len)

    def _tensors(self, seq: np.ndarray, mask: np.ndarray):
        import torch

        y = np.where(mask, seq[:, 1:], IGNORE_INDEX)  # [B, T]
        return torch.from_numpy(seq[:, :-1].copy()), torch.from_numpy(y)  # x [B, T], y [B, T]

    def batch(self, step: int):
        """(x, y) LongTensors [B, T]; y = x shifted left by one, IGNORE_INDEX off the answer positions."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return self._tensors(*self.draw(self.seed, step))

    def iter_from(self, step: int) -> Iterator:
        while True:
            yield self.batch(step)
            step += 1

    def __iter__(self) -> Iterator:
        return self.iter_from(0)

    def val_batches(self, n: int) -> list:
        """n fixed batches of this split's stream, independent of the seed: every run is scored on them."""
        return [self._tensors(*self.draw(0, i)) for i in range(n)]


@dataclass
class SyntheticData:
    """What `prepare("synthetic:...")` returns: PreparedData's interface for a generated task."""

    task: Task
    tokenizer_name: ClassVar[str] = "synthetic"

    @property
    def spec(self) -> str:
        return canonical(self.task)

    @property
    def vocab_size(self) -> int:
        return self.task.vocab

    @property
    def context_len(self) -> int | None:
        return self.task.len

    @property
    def meta(self) -> dict[str, Any]:
        from hopelab.data.cache import digest

        return {"corpus": self.spec, "key": digest({"synthetic": self.spec}), "synthetic": True}

    def sampler(self, split: str, context_len: int, batch_size: int, seed: int = 0) -> SyntheticSampler:
        if self.task.len is not None and context_len != self.task.len:
            raise UserError(f"{self.spec} has sequences of {self.task.len} tokens, the model's context is "
                            f"{context_len}")
        task = self.task if self.task.len is not None else dataclasses.replace(self.task, len=context_len)
        return SyntheticSampler(task, context_len, batch_size, seed, split)


def synthetic_data(spec: str) -> SyntheticData:
    return SyntheticData(parse_synthetic(spec))
