"""Where the data pipeline keeps its caches, and the small helpers that make them safe.

Layout under the cache root (`--cache-dir`, else `$HOPELAB_CACHE`, else `~/.cache/hopelab`):

    corpora/<name>-<key>.jsonl          extracted text of the embedded Wikipedia sample (one doc a line)
    tokenizers/bpe<V>-<name>-<key>/     a byte-level BPE trained on a corpus (tokenizer.json)
    data/<name>-<tok>-<V>-<key>/        train.bin, val.bin (token memmaps), meta.json (written last)

Every file is written to a temp name in its final directory and renamed into place, so a reader never
sees half a file; a data directory counts only once its meta.json is there and agrees with the files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from hopelab.errors import UserError

T = TypeVar("T")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else $HOPELAB_CACHE, else ~/.cache/hopelab (created if missing)."""
    if cache_dir is None:
        cache_dir = os.environ.get("HOPELAB_CACHE") or Path.home() / ".cache" / "hopelab"
    root = Path(cache_dir).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create cache directory {root}: {err.strerror}") from None
    if not os.access(root, os.W_OK):
        raise UserError(f"cache directory {root} is not writable")
    return root


def digest(obj: Any) -> str:
    """sha256 hex of a JSON-able object (sorted keys): the cache keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def slug(name: str) -> str:
    """A file-name-safe short label (for humans; the key makes the name unique)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:40] or "corpus"


def load_or_build(lock: Path, load: Callable[[], T | None], build: Callable[[], None]) -> T:
    """`load()` if the cache is there; else `build()` it under the lock `lock` (a process that waited for
    another one's build loads that instead) and load it. Parallel runs build a cache once."""
    found = load()
    if found is not None:
        return found
    with locked(lock):
        found = load()
        if found is None:
            build()
            found = load()
    if found is None:
        raise RuntimeError(f"the cache behind {lock} was just built but does not load")
    return found


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (flock) on `path`: parallel runs build a cache once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


