"""Reference cross-entropies (hopelab.data.references) on hand-built corpora with answers worked out by hand."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from hopelab.data.references import FILE, cross_entropies, references, unigram_probs


def test_unigram_and_bigram_match_the_hand_computed_answer():
    # train 0 1 0 1 2, V = 3: counts (2, 2, 1), N = 5 -> add-one p = (3/8, 3/8, 2/8)
    # contexts: 0 -> {1: 2} (c=2, T=1); 1 -> {0: 1, 2: 1} (c=2, T=2); 2 never a context
    train, val = np.array([0, 1, 0, 1, 2]), np.array([1, 0, 2, 2])
    np.testing.assert_allclose(unigram_probs(train, 3), [3 / 8, 3 / 8, 2 / 8])
    uni, bi = cross_entropies(train, val, 3)
    assert uni == pytest.approx(-(math.log(3 / 8) * 2 + math.log(2 / 8) * 2) / 4)
    p_0_after_1 = (1 + 2 * 3 / 8) / (2 + 2)  # seen pair: (c(v,w) + T(v) p(w)) / (c(v) + T(v))
    p_2_after_0 = (0 + 1 * 2 / 8) / (2 + 1)  # unseen pair after a seen context: the unigram share only
    p_2_after_2 = 2 / 8  # context never seen: the unigram
    assert bi == pytest.approx(-(math.log(p_0_after_1) + math.log(p_2_after_0) + math.log(p_2_after_2)) / 3)


def test_a_deterministic_sequence_has_a_low_bigram_and_a_log2_unigram():
    train = np.tile([0, 1], 5000)  # 0 1 0 1 ...: the next token is always known from the previous one
    uni, bi = cross_entropies(train, np.tile([0, 1], 50), 2)
    assert uni == pytest.approx(math.log(2), abs=1e-3)
    assert bi < 1e-3  # (5000 + 1 p) / (5000 + 1): almost certain


def test_references_are_cached_beside_the_data_and_keyed(tmp_path):
    data = SimpleNamespace(path=tmp_path, meta={"key": "k1"}, vocab_size=3, train=np.array([0, 1, 0, 1, 2]),
                           val=np.array([1, 0, 2, 2]))
    first = references(data)
    assert json.loads((tmp_path / FILE).read_text())["key"] == "k1"
    data.train = np.array([2, 2, 2, 1, 1])  # the cached value is used while the key matches ...
    assert references(data) == first
    data.meta = {"key": "k2"}  # ... and recomputed for other data
    assert references(data).unigram != first.unigram


def test_a_token_id_outside_the_vocabulary_is_refused():
    with pytest.raises(ValueError, match="out of range"):
        cross_entropies(np.array([0, 5]), np.array([0, 1]), 3)
