"""Tokenize a corpus once into cached train/val memmaps.

    data = prepare(corpus=None, tokenizer="bpe", vocab_size=8192)
    data.train, data.val            # 1-D np.memmap of token ids (uint16 when vocab < 65536, else uint32)

Documents are tokenized in order, each followed by the end-of-text token, and split by document:
document i (0-based, counting non-empty documents) goes to val when i % VAL_EVERY == VAL_EVERY - 1 (5%).
With 2..VAL_EVERY-1 documents the last one goes to val; a single document is split by tokens (its last
5% to val). The cache directory <cache>/data/<corpus>-<tokenizer>-<V>-<key>/ holds train.bin and val.bin
(written to temp files, then renamed) and meta.json, written last: a directory without a meta.json that
matches its key and file sizes is never used, it is rebuilt. The key hashes the format version, the corpus
fingerprint (contents, paths, text field), the tokenizer name and vocab size.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers

import hopelab
from hopelab.data.cache import cache_root, digest, load_or_build
from hopelab.data.corpus import Corpus, resolve_corpus
from hopelab.data.progress import progress_bar
from hopelab.data.synthetic import SyntheticData, is_synthetic, synthetic_data
from hopelab.data.tokenizer import Tokenizer, check_tokenizer_args, gpt2_tokenizer, trained_bpe
from hopelab.errors import UserError
from hopelab.records import atomic_path, write_json_atomic

FORMAT_VERSION = 1  # bump when the layout or the split rule changes
VAL_EVERY = 20
SINGLE_DOC_VAL_FRACTION = 0.05
ENCODE_BATCH_CHARS = 1 << 20  # text handed to one encode_batch call
ENCODE_BATCH_DOCS = 1024
PIECE_CHARS = 64 << 10  # long documents are encoded in pieces of about this many characters (parallel)
# A split point that changes nothing: before a space that follows a non-space and precedes a non-space,
# GPT-2's pre-tokenizer always starts a new pre-token (" word"), so pieces encode exactly like the whole.
_SAFE_SPLIT = re.compile(r"(?<=\S)(?= \S)")


@dataclass
class PreparedData:
    """A prepared corpus: token memmaps plus what produced them."""

    train: np.memmap  # 1-D token ids
    val: np.memmap
    vocab_size: int
    tokenizer_name: str
    meta: dict[str, Any]  # documents, train_tokens, val_tokens, bytes, cache_path, key, ...
    path: Path  # the cache directory

    def tokenizer(self) -> Tokenizer:
        """The exact tokenizer these ids came from (the trained BPE is stored beside the data)."""
        if self.tokenizer_name == "gpt2":
            return gpt2_tokenizer()
        from tokenizers import Tokenizer as HFTokenizer

        return Tokenizer("bpe", HFTokenizer.from_file(str(self.path / "tokenizer.json")))

    def sampler(self, split: str, context_len: int, batch_size: int, seed: int = 0):
        """A BatchSampler over the "train" or "val" split."""
        from hopelab.data.sampler import BatchSampler

        if split not in ("train", "val"):
            raise UserError(f"unknown split '{split}' (choose train or val)")
        return BatchSampler(getattr(self, split), context_len, batch_size, seed)


def prepare(
    corpus: str | os.PathLike | None = None,
    tokenizer: str = "bpe",
    vocab_size: int = 8192,
    cache_dir: str | os.PathLike | None = None,
    text_field: str = "text",
    progress: bool = True,
) -> PreparedData | SyntheticData:
    """Tokenized train/val memmaps of `corpus` (None = the embedded Wikipedia sample), from cache if there.

    For tokenizer "gpt2" the vocab size is 50257 whatever `vocab_size` says. A corpus "synthetic:TASK?..."
    is a generated task (hopelab.data.synthetic): nothing is tokenized or cached, the tokenizer is unused."""
    if is_synthetic(corpus):
        return synthetic_data(corpus)
    vocab_size = check_tokenizer_args(tokenizer, vocab_size)
    root = cache_root(cache_dir)
    source = resolve_corpus(corpus, text_field, root)
    key = digest({"format": FORMAT_VERSION, "corpus": source.fingerprint, "tokenizer": tokenizer,
                  "vocab_size": vocab_size, "val_every": VAL_EVERY})
    path = root / "data" / f"{source.name}-{tokenizer}-{vocab_size}-{key[:16]}"

    def build() -> None:
        with progress_bar(progress) as bar:
            tok = gpt2_tokenizer() if tokenizer == "gpt2" else trained_bpe(source, vocab_size, root, bar)
            try:
                _build(path, key, source, tok, vocab_size, bar)
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)  # only our incomplete files are in there
                raise

    return load_or_build(path.with_suffix(".lock"), lambda: _load(path, key), build)


def _load(path: Path, key: str) -> PreparedData | None:
    """Open a complete cache directory; None when meta.json is missing, stale or disagrees with the files."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("key") != key or meta.get("format") != FORMAT_VERSION:
            return None
        dtype = np.dtype(meta["dtype"])
        splits = {}
        for split in ("train", "val"):
            file = path / f"{split}.bin"
            n = int(meta[f"{split}_tokens"])
            if n < 1 or file.stat().st_size != n * dtype.itemsize:
                return None
            splits[split] = np.memmap(file, dtype=dtype, mode="r", shape=(n,))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    meta["cache_path"] = str(path)  # where it is now, even if the cache root moved
    return PreparedData(splits["train"], splits["val"], int(meta["vocab_size"]), meta["tokenizer"], meta, path)


def _build(path: Path, key: str, source: Corpus, tok: Tokenizer, vocab_size: int, bar) -> None:
    """Tokenize `source` into path/{train,val}.bin via temp files, then write meta.json last."""
    started = time.perf_counter()
    path.mkdir(parents=True, exist_ok=True)
    (path / "meta.json").unlink(missing_ok=True)  # the directory is incomplete from here on
    for stale in path.glob(".*.tmp"):  # temp files of a killed build (we hold the lock)
        stale.unlink()
    dtype = np.dtype(np.uint16 if tok.vocab_size < 65536 else np.uint32)
    with atomic_path(path / "train.bin") as train_tmp, atomic_path(path / "val.bin") as val_tmp:
        stats = _write_tokens(source.documents(bar, "tokenizing"), tok, dtype, train_tmp, val_tmp)
        if stats["documents"] == 0:
            raise UserError(f"corpus {source.description} has no text (every document is empty)")
        if stats["val_tokens"] == 0:  # fewer than VAL_EVERY documents: move the tail of train to val
            if stats["documents"] == 1:
                n = stats["train_tokens"]
                cut = n - max(1, round(n * SINGLE_DOC_VAL_FRACTION))
                rule = f"one document: its last {SINGLE_DOC_VAL_FRACTION:.0%} of tokens"
            else:
                cut = stats["last_train_doc_start"]
                stats["val_documents"], stats["train_documents"] = 1, stats["train_documents"] - 1
                rule = f"fewer than {VAL_EVERY} documents: the last document"
            _move_tail(train_tmp, val_tmp, cut, dtype)
            stats["val_tokens"], stats["train_tokens"] = stats["train_tokens"] - cut, cut
        else:
            rule = f"document i with i % {VAL_EVERY} == {VAL_EVERY - 1}"
        if stats["train_tokens"] == 0:
            raise UserError(f"corpus {source.description} is too small to split into train and val")
    if tok.name == "bpe":
        tok.save(path / "tokenizer.json")
    stats.pop("last_train_doc_start")
    meta = {
        "format": FORMAT_VERSION,
        "key": key,
        "corpus": source.description,
        "corpus_name": source.name,
        "corpus_fingerprint": source.fingerprint,
        "tokenizer": tok.name,
        "tokenizer_fingerprint": tok.fingerprint,
        "requested_vocab_size": vocab_size,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": dtype.name,
        "val_rule": rule,
        **stats,
        "cache_path": str(path),
        "build_seconds": round(time.perf_counter() - started, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"hopelab": hopelab.__version__, "tokenizers": tokenizers.__version__},
    }
    write_json_atomic(meta, path / "meta.json")


def _write_tokens(docs: Iterator[str], tok: Tokenizer, dtype: np.dtype, train_file: Path, val_file: Path) -> dict:
    """Stream documents through the tokenizer in batches; append `ids + [eot]` to train or val."""
    stats = {"documents": 0, "train_documents": 0, "val_documents": 0, "train_tokens": 0, "val_tokens": 0,
             "bytes": 0, "last_train_doc_start": 0}
    with open(train_file, "wb") as train_f, open(val_file, "wb") as val_f:
        for batch in _batches(docs):
            pieces, owner = [], []  # long documents are encoded in pieces
            for i, text in enumerate(batch):
                for piece in _pieces(text):
                    pieces.append(piece)
                    owner.append(i)
            encoded = tok.encode_batch(pieces)
            ids: list[list[int]] = [[] for _ in batch]
            for i, piece_ids in zip(owner, encoded):
                ids[i].extend(piece_ids)
            out = {"train": [], "val": []}
            for text, doc_ids in zip(batch, ids):
                split = "val" if stats["documents"] % VAL_EVERY == VAL_EVERY - 1 else "train"
                if split == "train":
                    stats["last_train_doc_start"] = stats["train_tokens"]
                doc_ids.append(tok.eot_id)
                out[split].extend(doc_ids)
                stats["documents"] += 1
                stats[f"{split}_documents"] += 1
                stats[f"{split}_tokens"] += len(doc_ids)
                stats["bytes"] += len(text.encode("utf-8"))
            np.asarray(out["train"], dtype=dtype).tofile(train_f)
            np.asarray(out["val"], dtype=dtype).tofile(val_f)
    return stats


def _batches(docs: Iterable[str]) -> Iterator[list[str]]:
    batch, chars = [], 0
    for text in docs:
        batch.append(text)
        chars += len(text)
        if chars >= ENCODE_BATCH_CHARS or len(batch) >= ENCODE_BATCH_DOCS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _pieces(text: str) -> list[str]:
    """Cut a long text at safe split points about every PIECE_CHARS characters."""
    pieces, start = [], 0
    while len(text) - start > PIECE_CHARS:
        m = _SAFE_SPLIT.search(text, start + PIECE_CHARS)
        if m is None:
            break
        pieces.append(text[start : m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


def _move_tail(train_file: Path, val_file: Path, cut: int, dtype: np.dtype) -> None:
    """Move tokens [cut:] of train_file into val_file (which is empty) and truncate train_file."""
    tail = np.fromfile(train_file, dtype=dtype, offset=cut * dtype.itemsize)
    tail.tofile(val_file)
    os.truncate(train_file, cut * dtype.itemsize)
