"""Corpora as a stream of documents: the embedded Wikipedia sample, or the user's files.

A corpus is either
  * the default: the English Wikipedia sample that ships inside the gensim wheel (106 articles, about
    3.1 MB of text after gensim's own `extract_pages` + `filter_wiki`, redirects dropped; CC BY-SA).
    It is parsed once and the extracted text cached as JSONL under <cache>/corpora/;
  * a .txt file (one document), a .jsonl file (one document a line, text in a field), a Parquet file
    (one document a row, text in a column), or a directory of any of these (searched recursively,
    in sorted path order; OpenWebText exported to Parquet shards works as is, column "text").

`fingerprint` changes whenever the documents could change: file contents (sha256; size + mtime + path
for files over CONTENT_HASH_MAX_BYTES), the relative path list, the text field, and for the embedded
sample the gensim version and the extraction version. Documents that are empty or only whitespace are
skipped. Every bad input raises UserError with one line naming it.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from hopelab.data.cache import digest, file_sha256, locked, slug
from hopelab.errors import UserError
from hopelab.records import atomic_path

EMBEDDED_PACKAGE = "gensim"
EMBEDDED_RESOURCE = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
EMBEDDED_NAME = "enwiki-sample"
EXTRACT_VERSION = 1  # bump when the extraction below changes what text comes out
CONTENT_HASH_MAX_BYTES = 64 << 20  # larger files are fingerprinted by path, size and mtime
SUFFIXES = (".txt", ".jsonl", ".parquet")
PARQUET_BATCH_ROWS = 1024


class Corpus(ABC):
    """A named stream of documents with a fingerprint for cache keys."""

    name: str  # a short label for cache directory names
    fingerprint: str  # sha256 hex; changes when the documents could change
    description: str  # for summaries: "embedded enwiki sample" or the path

    @abstractmethod
    def _files(self, progress) -> list[Path]:
        """The files to read, in order (the embedded sample extracts its text here, once)."""

    @abstractmethod
    def _read(self, path: Path, on_bytes) -> Iterator[str]:
        """The documents of one file; calls on_bytes(n) as it consumes n bytes of it."""

    def documents(self, progress, description: str = "reading corpus") -> Iterator[str]:
        """Yield every non-empty document, in a fixed order; a progress bar counts file bytes."""
        files = self._files(progress)
        task = progress.add_task(description, total=sum(_size(p) for p in files))
        for path in files:
            for text in self._read(path, lambda n: progress.advance(task, n)):
                if text.strip():
                    yield text


def resolve_corpus(corpus: str | os.PathLike | None, text_field: str, root: Path) -> Corpus:
    """The embedded sample when `corpus` is None, else the user's file or directory (validated)."""
    if corpus is None:
        return EmbeddedCorpus(root)
    return FileCorpus(Path(corpus).expanduser(), text_field)


# ----------------------------------------------------------------------------- embedded sample


class EmbeddedCorpus(Corpus):
    """gensim's enwiki test dump: extracted once with gensim's own parser, then read from JSONL."""

    def __init__(self, root: Path):
        try:
            version = metadata.version(EMBEDDED_PACKAGE)
        except metadata.PackageNotFoundError:
            raise UserError("gensim (it ships the default corpus) is not installed; pass --corpus") from None
        self.name = EMBEDDED_NAME
        self.description = f"embedded {EMBEDDED_NAME} (gensim {version}, CC BY-SA)"
        # A given gensim release ships one fixed file: its version identifies the bytes without
        # importing gensim (1-2 s), which keeps a warm `prepare` fast.
        self.fingerprint = digest(
            {"corpus": "gensim-enwiki", "resource": EMBEDDED_RESOURCE, "gensim": version, "extract": EXTRACT_VERSION}
        )
        self.text_path = root / "corpora" / f"{self.name}-{self.fingerprint[:16]}.jsonl"

    def _files(self, progress) -> list[Path]:
        with locked(self.text_path.with_suffix(".lock")):
            if not self.text_path.exists():
                extract_wiki_sample(self.text_path, progress)
        return [self.text_path]

    def _read(self, path: Path, on_bytes) -> Iterator[str]:
        return read_jsonl(path, "text", on_bytes)


def extract_wiki_sample(out: Path, progress) -> int:
    """Parse the bz2 XML dump with gensim (articles only, redirects dropped) into JSONL; returns #docs."""
    import bz2
    from importlib.resources import as_file, files

    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    resource = files(EMBEDDED_PACKAGE).joinpath(EMBEDDED_RESOURCE)
    with as_file(resource) as src:
        task = progress.add_task("parsing wiki dump", total=src.stat().st_size)
        pages = []  # (title, wiki markup) of real articles
        with open(src, "rb") as raw, bz2.BZ2File(raw) as xml:
            for title, markup, _pageid in extract_pages(xml, filter_namespaces=("0",)):
                progress.update(task, completed=raw.tell())
                if markup.strip() and not markup.lstrip().lower().startswith("#redirect"):
                    pages.append((title, markup))
    markups = [markup for _, markup in pages]
    task = progress.add_task("cleaning wiki markup", total=sum(len(m) for m in markups))
    texts = []
    for markup, text in zip(markups, _map_filter_wiki(filter_wiki, markups)):
        texts.append(text.strip())
        progress.advance(task, len(markup))
    with atomic_path(out) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for (title, _), text in zip(pages, texts):
                f.write(json.dumps({"title": title, "text": text}, ensure_ascii=False) + "\n")
    return len(texts)


def _map_filter_wiki(fn, markups: list[str]) -> Iterator[str]:
    """filter_wiki is pure-Python regex work (about 2.5 s here): spread it over forked workers."""
    import multiprocessing as mp

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(cpus, 8)
    if workers < 2 or "fork" not in mp.get_all_start_methods():
        yield from map(fn, markups)
        return
    with mp.get_context("fork").Pool(workers) as pool:  # fork: gensim is already imported here
        yield from pool.imap(fn, markups, chunksize=1)


# ----------------------------------------------------------------------------- user files


class FileCorpus(Corpus):
    """A .txt / .jsonl / .parquet file or a directory of them."""

    def __init__(self, path: Path, text_field: str):
        if not path.exists():
            raise UserError(f"corpus path {path} does not exist")
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*")
                if p.suffix.lower() in SUFFIXES and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not files:
                raise UserError(f"corpus directory {path} has no .txt, .jsonl or .parquet files")
        else:
            if path.suffix.lower() not in SUFFIXES:
                raise UserError(
                    f"unsupported corpus file {path.name}: expected .txt, .jsonl, .parquet or a directory"
                )
            files = [path]
        self.path, self.files, self.text_field = path, files, text_field
        self.name = slug(path.stem if path.is_file() else path.name)
        self.description = str(path)
        entries = []
        for p in files:
            rel = p.name if p == path else str(p.relative_to(path))
            try:
                st = p.stat()
                if st.st_size <= CONTENT_HASH_MAX_BYTES:
                    entries.append([rel, st.st_size, file_sha256(p)])
                else:
                    entries.append([rel, st.st_size, str(p.resolve()), st.st_mtime_ns])
            except OSError as err:
                raise UserError(f"cannot read corpus file {p}: {err.strerror}") from None
            if p.suffix.lower() == ".parquet":
                parquet_text_column(p, text_field)  # fail early on a missing column
        if all(e[1] == 0 for e in entries):
            raise UserError(f"corpus {path} is empty (all files have 0 bytes)")
        uses_field = any(p.suffix.lower() != ".txt" for p in files)
        self.fingerprint = digest(
            {"corpus": "files", "files": entries, "text_field": text_field if uses_field else None}
        )

    def _files(self, progress) -> list[Path]:
        return self.files

    def _read(self, path: Path, on_bytes) -> Iterator[str]:
        suffix = path.suffix.lower()
        if suffix == ".txt":
            return read_txt(path, on_bytes)
        if suffix == ".jsonl":
            return read_jsonl(path, self.text_field, on_bytes)
        return read_parquet(path, self.text_field, on_bytes)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{where} is not UTF-8 text (invalid byte at offset {err.start})") from None


def read_txt(path: Path, on_bytes) -> Iterator[str]:
    """A .txt file is one document."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read corpus file {path}: {err.strerror}") from None
    text = _decode(data, str(path))
    on_bytes(len(data))
    yield text


def read_jsonl(path: Path, field: str, on_bytes) -> Iterator[str]:
    """One JSON object a line; the document is its `field` (null values are skipped)."""
    try:
        f = open(path, "rb")
    except OSError as err:
        raise UserError(f"cannot read corpus file {path}: {err.strerror}") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            on_bytes(len(raw))
            if not raw.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                obj = json.loads(_decode(raw, where))
            except json.JSONDecodeError as err:
                raise UserError(f"{where} is not valid JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{where} is not a JSON object")
            if field not in obj:
                fields = ", ".join(sorted(obj)[:10]) or "none"
                raise UserError(f"{where} has no field '{field}' (fields: {fields}; choose with --text-field)")
            text = obj[field]
            if text is None:
                continue
            if not isinstance(text, str):
                raise UserError(f"field '{field}' at {where} is a {type(text).__name__}, not a string")
            yield text


def parquet_text_column(path: Path, field: str):
    """Open a Parquet file and check that `field` is a string column; returns the ParquetFile."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise UserError(f"cannot read Parquet file {path}: {str(err).splitlines()[0]}") from None
    schema = pf.schema_arrow
    if field not in schema.names:
        cols = ", ".join(schema.names[:10]) or "none"
        raise UserError(f"Parquet file {path} has no column '{field}' (columns: {cols}; choose with --text-field)")
    kind = schema.field(field).type
    is_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or is_view(kind)):
        raise UserError(f"column '{field}' of Parquet file {path} has type {kind}, not string")
    return pf


def read_parquet(path: Path, field: str, on_bytes) -> Iterator[str]:
    """One row is one document (nulls skipped); read in batches so any size streams."""
    import pyarrow as pa

    pf = parquet_text_column(path, field)
    rows, size = max(pf.metadata.num_rows, 1), _size(path)
    try:
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[field]):
            on_bytes(size * batch.num_rows / rows)
            for text in batch.column(0).to_pylist():
                if text is not None:
                    yield text
    except UnicodeDecodeError:
        raise UserError(f"column '{field}' of Parquet file {path} is not valid UTF-8") from None
    except pa.ArrowException as err:
        raise UserError(f"cannot read Parquet file {path}: {str(err).splitlines()[0]}") from None
