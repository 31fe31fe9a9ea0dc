"""Reference cross-entropies of a prepared dataset: what a model that learned only token frequencies (unigram)
or only the previous token (bigram) scores on the validation split. They place a run's validation loss on a
scale: a model near the unigram line has learned frequencies and little else.

    refs = references(data)        # References(unigram=7.29, bigram=5.81, ...), cached beside the data
    refs.to_dict()                 # what a run stores in config.json["data"]["references"]

Both are fit on the train split and scored on the validation split, in nats/token, with the data's own
tokenizer and vocabulary V (the model's output size):
    unigram  p(w) = (c(w) + 1) / (N + V)                       add-one (Laplace) over the N train tokens
    bigram   p(w | v) = (c(v, w) + T(v) p(w)) / (c(v) + T(v))  Witten-Bell interpolation with the unigram:
             T(v) = distinct successors of v in train, so no parameter is tuned on validation; a v never seen
             as a context falls back to p(w)
The unigram is scored on every validation token, the bigram on each token after the first (its n − 1 pairs).
Pairs run across document boundaries through the end-of-text token, as the model's training windows do.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from hopelab.data.cache import load_or_build
from hopelab.data.synthetic import SyntheticData
from hopelab.records import write_json_atomic

FORMAT = 1  # bump when a definition above changes: cached files of another format are recomputed
FILE = "references.json"
METHOD = "unigram: add-one; bigram: Witten-Bell interpolated with the unigram; fit on train, scored on val"


@dataclass(frozen=True)
class References:
    unigram: float  # nats/token on the validation split
    bigram: float
    val_tokens: int
    method: str = METHOD

    def to_dict(self) -> dict:
        return asdict(self)


def unigram_probs(train: np.ndarray, vocab_size: int) -> np.ndarray:
    """Add-one unigram distribution over the vocabulary, [V]."""
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=vocab_size).astype(np.float64)  # [V]
    return (counts + 1.0) / (counts.sum() + vocab_size)


def cross_entropies(train: np.ndarray, val: np.ndarray, vocab_size: int) -> tuple[float, float]:
    """(unigram, bigram) cross-entropy in nats/token of `val` under models fit on `train` (module docstring)."""
    train = np.asarray(train, dtype=np.int64)
    val = np.asarray(val, dtype=np.int64)
    V = int(vocab_size)
    if max(int(train.max(initial=0)), int(val.max(initial=0))) >= V:
        raise ValueError(f"token id out of range for vocabulary size {V}")
    p_uni = unigram_probs(train, V)  # [V]
    unigram = float(-np.log(p_uni[val]).mean())
    if len(train) < 2 or len(val) < 2:
        return unigram, float("nan")
    pairs, pair_counts = np.unique(train[:-1] * V + train[1:], return_counts=True)  # sorted codes v*V + w
    ctx = np.bincount(train[:-1], minlength=V).astype(np.float64)  # c(v) as a context, [V]
    types = np.bincount(pairs // V, minlength=V).astype(np.float64)  # T(v), [V]
    prev, nxt = val[:-1], val[1:]  # [n-1]
    codes = prev * V + nxt
    at = np.searchsorted(pairs, codes).clip(max=len(pairs) - 1)
    c_vw = np.where(pairs[at] == codes, pair_counts[at], 0).astype(np.float64)  # c(v, w), [n-1]
    c_v, t_v = ctx[prev], types[prev]
    seen = c_v > 0
    p = np.where(seen, (c_vw + t_v * p_uni[nxt]) / np.where(seen, c_v + t_v, 1.0), p_uni[nxt])
    return unigram, float(-np.log(p).mean())


def references(data) -> References | None:
    """The references of a PreparedData, computed once and cached in its directory (references.json); None for
    a generated task (hopelab.data.synthetic), whose loss counts answers, not next tokens of a text."""
    if isinstance(data, SyntheticData):
        return None
    path = data.path / FILE
    key = data.meta.get("key")

    def build() -> None:
        unigram, bigram = cross_entropies(data.train, data.val, data.vocab_size)
        refs = References(round(unigram, 6), round(bigram, 6), int(len(data.val)))
        write_json_atomic({"format": FORMAT, "key": key, **refs.to_dict()}, path)

    return load_or_build(path.with_suffix(".lock"), lambda: _read(path, key), build)


def _read(path, key) -> References | None:
    try:
        obj = json.loads(path.read_text())
        if obj.get("format") != FORMAT or obj.get("key") != key:
            return None
        return References(float(obj["unigram"]), float(obj["bigram"]), int(obj["val_tokens"]), obj["method"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
