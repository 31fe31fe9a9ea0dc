"""The offline data pipeline: tokenizers, corpora, the token cache, the batch sampler, `hopelab data prepare`.

The embedded Wikipedia sample is parsed once per session (session-scoped cache directory); everything
else uses small corpora written into tmp_path with the gpt2 tokenizer (no training) or a tiny BPE.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from hopelab.data import BatchSampler, PreparedData, get_tokenizer, prepare
from hopelab.data.cache import cache_root
from hopelab.errors import UserError

EOT = "<|endoftext|>"
TRICKY = "Héllo  wörld!\n\n\tTabs, 'quotes', 12345 and emoji 🙂 — done.  \n"


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hopelab-cache")


@pytest.fixture(scope="session")
def gpt2():
    return get_tokenizer("gpt2")


@pytest.fixture(scope="session")
def wiki_gpt2(cache) -> PreparedData:
    return prepare(tokenizer="gpt2", cache_dir=cache, progress=False)


@pytest.fixture(scope="session")
def wiki_bpe(cache) -> PreparedData:
    return prepare(tokenizer="bpe", vocab_size=8192, cache_dir=cache, progress=False)


def wiki_documents(cache: Path) -> list[str]:
    """The extracted text of the embedded sample, as cached by the first prepare."""
    (path,) = (cache / "corpora").glob("enwiki-sample-*.jsonl")
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def write_docs_txt_dir(root: Path, docs: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(docs):
        (root / f"doc{i:02d}.txt").write_text(doc, encoding="utf-8")
    return root


def write_jsonl(path: Path, docs: list[str | None], field: str = "text") -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, doc in enumerate(docs):
            f.write(json.dumps({"id": i, field: doc}) + "\n")
    return path


# ----------------------------------------------------------------------------- tokenizers


def test_gpt2_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.eot_id == 50256
    assert gpt2.vocab_size == 50257
    assert gpt2.encode(EOT) == [50256]
    assert gpt2.encode(" the") == [262]  # no prefix space is added: " the" and "the" differ
    assert gpt2.encode("the") == [1169]


def test_gpt2_round_trip(gpt2):
    ids = gpt2.encode(TRICKY)
    assert gpt2.decode(ids) == TRICKY
    assert gpt2.decode(ids + [gpt2.eot_id]) == TRICKY + EOT


def test_bpe_on_embedded_corpus(wiki_bpe, cache):
    tok = get_tokenizer("bpe", vocab_size=8192, cache_dir=cache)  # the cached one, not retrained
    assert tok.vocab_size == 8192
    assert tok.eot_id == 0 and tok.decode([tok.eot_id]) == EOT
    assert tok.fingerprint == wiki_bpe.meta["tokenizer_fingerprint"]
    assert tok.decode(tok.encode(TRICKY)) == TRICKY
    assert wiki_bpe.tokenizer().fingerprint == tok.fingerprint
    # a BPE trained on the corpus compresses it: well under one token per 3 bytes
    meta = wiki_bpe.meta
    assert (meta["train_tokens"] + meta["val_tokens"]) * 3 < meta["bytes"]
    assert wiki_bpe.train.dtype == np.uint16 and int(wiki_bpe.train.max()) < 8192


# ----------------------------------------------------------------------------- embedded corpus


def test_embedded_corpus_gpt2(wiki_gpt2, cache, gpt2):
    meta = wiki_gpt2.meta
    assert meta["documents"] == 106
    assert meta["train_tokens"] + meta["val_tokens"] > 600_000
    assert meta["train_documents"] + meta["val_documents"] == 106 and meta["val_documents"] >= 1
    assert 0.02 < meta["val_tokens"] / (meta["train_tokens"] + meta["val_tokens"]) < 0.10
    assert 2_900_000 < meta["bytes"] < 3_300_000
    assert wiki_gpt2.vocab_size == 50257 and wiki_gpt2.tokenizer_name == "gpt2"
    assert len(wiki_gpt2.train) == meta["train_tokens"] and len(wiki_gpt2.val) == meta["val_tokens"]
    assert wiki_gpt2.train.dtype == np.uint16
    # one end-of-text after every document of its split
    assert int((np.asarray(wiki_gpt2.train) == 50256).sum()) == meta["train_documents"]
    assert int((np.asarray(wiki_gpt2.val) == 50256).sum()) == meta["val_documents"]
    # the ids decode back to the extracted articles, in order: doc 0 opens train, doc 19 opens val
    docs = wiki_documents(cache)
    assert len(docs) == 106 and not any(d.lstrip().lower().startswith("#redirect") for d in docs)
    first_eot = int(np.argmax(np.asarray(wiki_gpt2.train) == 50256))
    assert gpt2.decode(wiki_gpt2.train[:first_eot]) == docs[0]
    first_val_eot = int(np.argmax(np.asarray(wiki_gpt2.val) == 50256))
    assert gpt2.decode(wiki_gpt2.val[:first_val_eot]) == docs[19]


def test_warm_cache_reuses_files(wiki_gpt2, cache):
    train_file = wiki_gpt2.path / "train.bin"
    before = train_file.stat().st_mtime_ns
    again = prepare(tokenizer="gpt2", vocab_size=123, cache_dir=cache, progress=False)  # vocab ignored
    assert again.path == wiki_gpt2.path and again.meta["key"] == wiki_gpt2.meta["key"]
    assert train_file.stat().st_mtime_ns == before  # opened, not rebuilt
    assert np.array_equal(again.val, wiki_gpt2.val)


def test_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("HOPELAB_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "flag") == tmp_path / "flag"  # the flag wins over the env
    monkeypatch.delenv("HOPELAB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "hopelab"


# ----------------------------------------------------------------------------- user corpora


def test_txt_directory_documents_and_split(tmp_path, gpt2):
    docs = ["first document.", "second one\nwith two lines", "third and last"]
    root = write_docs_txt_dir(tmp_path / "corpus", docs)
    (root / "nested").mkdir()
    (root / "nested" / "zz.txt").write_text("nested fourth", encoding="utf-8")
    (root / "notes.md").write_text("not a corpus file", encoding="utf-8")
    data = prepare(root, tokenizer="gpt2", cache_dir=tmp_path / "c", progress=False)
    assert data.meta["documents"] == 4  # sorted paths: doc00, doc01, doc02, nested/zz
    # fewer than 20 documents: the last one is the validation split
    assert data.meta["train_documents"] == 3 and data.meta["val_documents"] == 1
    assert gpt2.decode(data.train) == EOT.join(docs) + EOT
    assert gpt2.decode(data.val) == "nested fourth" + EOT


def test_single_txt_split_by_tokens(tmp_path, gpt2):
    text = " ".join(f"word{i}" for i in range(400))
    path = tmp_path / "one.txt"
    path.write_text(text, encoding="utf-8")
    data = prepare(path, tokenizer="gpt2", cache_dir=tmp_path / "c", progress=False)
    n = len(gpt2.encode(text)) + 1
    assert data.meta["documents"] == 1
    assert data.meta["val_tokens"] == round(n * 0.05) and data.meta["train_tokens"] == n - round(n * 0.05)
    assert gpt2.decode(np.concatenate([data.train, data.val])) == text + EOT


def test_jsonl_field_and_every_20th_document_to_val(tmp_path, gpt2):
    docs = [f"document number {i}." for i in range(45)]
    path = write_jsonl(tmp_path / "c.jsonl", docs[:10] + [None, "   "] + docs[10:], field="body")
    data = prepare(path, tokenizer="gpt2", text_field="body", cache_dir=tmp_path / "c", progress=False)
    assert data.meta["documents"] == 45  # null and blank documents are skipped
    val_docs = [docs[19], docs[39]]
    assert gpt2.decode(data.val) == "".join(d + EOT for d in val_docs)
    assert gpt2.decode(data.train) == "".join(d + EOT for d in docs if d not in val_docs)
    with pytest.raises(UserError, match="no field 'text'"):
        prepare(path, tokenizer="gpt2", cache_dir=tmp_path / "c", progress=False)


def test_parquet_openwebtext_layout(tmp_path, gpt2):
    # OpenWebText exported to Parquet: a "text" column, possibly in several shards
    shards = tmp_path / "owt"
    shards.mkdir()
    docs = [f"web page {i}: {TRICKY}" for i in range(6)]
    pq.write_table(pa.table({"text": docs[:4]}), shards / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({"text": docs[4:] + [None]}), shards / "train-00001-of-00002.parquet")
    data = prepare(shards, tokenizer="gpt2", cache_dir=tmp_path / "c", progress=False)
    assert data.meta["documents"] == 6
    assert gpt2.decode(np.concatenate([data.train, data.val])) == EOT.join(docs) + EOT
    single = prepare(shards / "train-00000-of-00002.parquet", tokenizer="gpt2", cache_dir=tmp_path / "c",
                     progress=False)
    assert single.meta["documents"] == 4


def test_trained_bpe_on_user_corpus(tmp_path):
    docs = [" ".join(f"{w}{i * j}" for j in range(60) for w in ("fox", "dog", "cat")) for i in range(5)]
    root = write_docs_txt_dir(tmp_path / "corpus", docs)
    small = prepare(root, tokenizer="bpe", vocab_size=300, cache_dir=tmp_path / "c", progress=False)
    larger = prepare(root, tokenizer="bpe", vocab_size=320, cache_dir=tmp_path / "c", progress=False)
    tok = small.tokenizer()
    assert tok.vocab_size == 300 and small.vocab_size == 300 and larger.vocab_size == 320
    assert tok.decode(np.concatenate([small.train, small.val])) == EOT.join(docs) + EOT
    assert tok.decode(tok.encode(TRICKY)) == TRICKY  # byte-level: unseen characters still round-trip
    # the vocab size is part of both cache keys
    assert small.meta["key"] != larger.meta["key"]
    assert small.meta["tokenizer_fingerprint"] != larger.meta["tokenizer_fingerprint"]
    assert len(larger.train) < len(small.train)  # more merges, fewer tokens


# ----------------------------------------------------------------------------- cache keys and safety


def test_cache_key_changes_with_corpus_and_tokenizer(tmp_path, gpt2):
    path = tmp_path / "c.txt"
    path.write_text("alpha beta gamma delta", encoding="utf-8")
    a = prepare(path, tokenizer="gpt2", cache_dir=tmp_path / "c", progress=False)
    path.write_text("alpha beta gamma DELTA", encoding="utf-8")  # same size, new content
    b = prepare(path, tokenizer="gpt2", cache_dir=tmp_path / "c", progress=False)
    assert a.meta["key"] != b.meta["key"] and a.path != b.path
    assert gpt2.decode(np.concatenate([b.train, b.val])) == "alpha beta gamma DELTA" + EOT
    c = prepare(path, tokenizer="bpe", vocab_size=260, cache_dir=tmp_path / "c", progress=False)
    assert c.meta["key"] not in (a.meta["key"], b.meta["key"])
    jl = write_jsonl(tmp_path / "c.jsonl", ["x y z"])
    k1 = prepare(jl, tokenizer="gpt2", cache_dir=tmp_path / "c", progress=False).meta["key"]
    write_jsonl(jl, ["x y z"], field="body")
    k2 = prepare(jl, tokenizer="gpt2", text_field="body", cache_dir=tmp_path / "c", progress=False).meta["key"]
    assert k1 != k2


def test_incomplete_cache_is_never_used(tmp_path, gpt2):
    docs = ["one small document", "another small document", "a third"]
    root = write_docs_txt_dir(tmp_path / "corpus", docs)
    expected = EOT.join(docs) + EOT
    data = prepare(root, tokenizer="gpt2", cache_dir=tmp_path / "c", progress=False)
    path = data.path
    del data
    # 1) meta.json missing (a build that died before its last write) and garbage in train.bin
    (path / "meta.json").unlink()
    (path / "train.bin").write_bytes(b"\x07\x00" * 5)
    stale_tmp = path / ".train.bin.abc123.tmp"
    stale_tmp.write_bytes(b"\x01\x00" * 99)
    rebuilt = prepare(root, tokenizer="gpt2", cache_dir=tmp_path / "c", progress=False)
    assert (path / "meta.json").exists() and not stale_tmp.exists()
    assert gpt2.decode(np.concatenate([rebuilt.train, rebuilt.val])) == expected
    # 2) a meta.json whose sizes disagree with the files (a truncated train.bin)
    os.truncate(path / "train.bin", 4)
    rebuilt = prepare(root, tokenizer="gpt2", cache_dir=tmp_path / "c", progress=False)
    assert gpt2.decode(np.concatenate([rebuilt.train, rebuilt.val])) == expected


def test_interrupted_build_leaves_nothing_usable(tmp_path, monkeypatch, gpt2):
    import hopelab.data.dataset as dataset

    path = tmp_path / "c.txt"
    path.write_text("some text to tokenize", encoding="utf-8")
    real = dataset._write_tokens

    def dying(docs, tok, dtype, train_file, val_file):
        real(docs, tok, dtype, train_file, val_file)  # the token files are fully written ...
        raise KeyboardInterrupt  # ... and the process is killed before meta.json

    monkeypatch.setattr(dataset, "_write_tokens", dying)
    with pytest.raises(KeyboardInterrupt):
        prepare(path, tokenizer="gpt2", cache_dir=tmp_path / "c", progress=False)
    assert not list((tmp_path / "c" / "data").glob("*/meta.json"))
    assert not list((tmp_path / "c" / "data").glob("*/*.bin"))
    monkeypatch.setattr(dataset, "_write_tokens", real)
    data = prepare(path, tokenizer="gpt2", cache_dir=tmp_path / "c", progress=False)
    assert gpt2.decode(np.concatenate([data.train, data.val])) == "some text to tokenize" + EOT


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def bad_inputs(tmp_path) -> dict:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("  \n\n  ", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("café olé".encode("latin-1"))
    write_jsonl(tmp_path / "nofield.jsonl", ["text under another name"], field="content")
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    pq.write_table(pa.table({"content": ["x"]}), tmp_path / "nocol.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "intcol.parquet")
    (tmp_path / "garbage.parquet").write_bytes(b"this is not parquet at all")
    (tmp_path / "data.csv").write_text("text\nhello\n", encoding="utf-8")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.md").write_text("hello", encoding="utf-8")
    return {
        "missing.txt": "does not exist",
        "empty.txt": "empty",
        "blank": "no text",
        "latin1.txt": "not UTF-8",
        "nofield.jsonl": "no field 'text'",
        "broken.jsonl": "line 2 is not valid JSON",
        "nocol.parquet": "no column 'text'",
        "intcol.parquet": "not string",
        "garbage.parquet": "cannot read Parquet",
        "data.csv": "unsupported corpus file",
        "nothing": "no .txt, .jsonl or .parquet",
    }


@pytest.mark.parametrize("tokenizer", ["gpt2", "bpe"])
def test_bad_corpora_raise_user_error(tmp_path, bad_inputs, tokenizer):
    for name, message in bad_inputs.items():
        with pytest.raises(UserError, match=message) as err:
            prepare(tmp_path / name, tokenizer=tokenizer, vocab_size=300, cache_dir=tmp_path / "c", progress=False)
        assert "\n" not in str(err.value) and name in str(err.value)
    # no cache directory is left behind by a failed build
    assert not [p for p in (tmp_path / "c" / "data").glob("*") if p.is_dir()]


def test_bad_tokenizer_arguments(tmp_path):
    with pytest.raises(UserError, match="unknown tokenizer 'gpt3'.*gpt2, bpe"):
        prepare(tokenizer="gpt3", cache_dir=tmp_path, progress=False)
    with pytest.raises(UserError, match="unknown tokenizer"):
        get_tokenizer("sentencepiece")
    with pytest.raises(UserError, match="out of range"):
        get_tokenizer("bpe", vocab_size=100, cache_dir=tmp_path)


def invoke_cli(args: list[str]) -> tuple[int, str, str]:
    """Run the real console entry point (hopelab.cli.main, which maps UserError to exit 2) in-process."""
    from hopelab import cli

    runner = CliRunner()
    with runner.isolation() as streams:
        argv, sys.argv = sys.argv, ["hopelab", *args]
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
        finally:
            sys.argv = argv
        out, err = streams[0].getvalue().decode(), streams[1].getvalue().decode()
    return code, out, err


def test_cli_bad_input_exit_2(tmp_path, bad_inputs):
    for args, message in [
        (["--corpus", str(tmp_path / "missing.txt")], "does not exist"),
        (["--corpus", str(tmp_path / "latin1.txt"), "--tokenizer", "gpt2"], "not UTF-8"),
        (["--tokenizer", "gpt3"], "unknown tokenizer 'gpt3'"),
    ]:
        code, out, err = invoke_cli(["data", "prepare", *args, "--cache-dir", str(tmp_path / "c"), "--no-progress"])
        assert code == 2, (args, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
        assert "Traceback" not in out + err


def test_cli_prepare_summary(tmp_path):
    root = write_docs_txt_dir(tmp_path / "corpus", ["a tiny corpus", "of two documents"])
    args = ["data", "prepare", "--corpus", str(root), "--tokenizer", "gpt2", "--cache-dir", str(tmp_path / "c")]
    code, out, err = invoke_cli(args)
    assert code == 0, err
    data = prepare(root, tokenizer="gpt2", cache_dir=tmp_path / "c", progress=False)
    flat = " ".join(out.split())
    for expected in ["documents", "2 (train 1, val 1)", "tokens train", f"{data.meta['train_tokens']:,}",
                     "bytes", f"{data.meta['bytes']:,}", "cache path"]:
        assert expected in flat, (expected, out)


# ----------------------------------------------------------------------------- batch sampler


def test_sampler_deterministic_and_shifted():
    tokens = np.arange(5000, dtype=np.uint16)  # a token's value is its position
    sampler = BatchSampler(tokens, context_len=16, batch_size=8, seed=3)
    x, y = sampler.batch(7)
    assert x.dtype == torch.long and y.dtype == torch.long and x.shape == y.shape == (8, 16)
    assert torch.equal(y, x + 1)  # y is x shifted by one token
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)  # every row is a contiguous window
    assert int(x.min()) >= 0 and int(y.max()) <= 4999
    again = BatchSampler(tokens, context_len=16, batch_size=8, seed=3)
    for step in (0, 7, 10_000):
        assert all(torch.equal(a, b) for a, b in zip(again.batch(step), sampler.batch(step)))
    assert not torch.equal(sampler.batch(8)[0], x)  # the next step differs
    other = BatchSampler(tokens, context_len=16, batch_size=8, seed=4)
    assert not torch.equal(other.batch(7)[0], x)  # another seed differs
    # iteration is batch(0), batch(1), ... and a resumed stream continues where it left off
    first = list(itertools.islice(iter(sampler), 3))
    assert all(torch.equal(first[i][0], sampler.batch(i)[0]) for i in range(3))
    resumed = next(sampler.iter_from(2))
    assert torch.equal(resumed[0], first[2][0])


def test_sampler_validation_batches(wiki_gpt2):
    sampler = wiki_gpt2.sampler("val", context_len=64, batch_size=4, seed=0)
    batches = sampler.val_batches(3)
    assert len(batches) == 3 and all(x.shape == (4, 64) for x, _ in batches)
    other = wiki_gpt2.sampler("val", context_len=64, batch_size=4, seed=99).val_batches(3)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, other))
    val = torch.from_numpy(np.asarray(wiki_gpt2.val).astype(np.int64))
    assert torch.equal(batches[0][0][0], val[:64])  # the windows span the split from start ...
    assert torch.equal(batches[-1][1][-1], val[-64:])  # ... to end
    for x, y in batches:
        assert torch.equal(x[:, 1:], y[:, :-1])


def test_sampler_rejects_too_short_split():
    with pytest.raises(UserError, match="too short"):
        BatchSampler(np.arange(10, dtype=np.uint16), context_len=10, batch_size=2, seed=0)


def test_long_documents_are_encoded_in_pieces_without_changing_ids(tmp_path, monkeypatch, gpt2):
    import hopelab.data.dataset as dataset

    monkeypatch.setattr(dataset, "PIECE_CHARS", 40)  # force many pieces in a short document
    text = ("It's  a test:\n\n  don't split 'words' badly, 3.14 ... ok?  " * 30) + "end"
    assert len(dataset._pieces(text)) > 10
    path = tmp_path / "long.txt"
    path.write_text(text, encoding="utf-8")
    data = prepare(path, tokenizer="gpt2", cache_dir=tmp_path / "c", progress=False)
    assert np.concatenate([data.train, data.val]).tolist() == gpt2.encode(text) + [gpt2.eot_id]
