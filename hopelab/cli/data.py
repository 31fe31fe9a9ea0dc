"""`hopelab data prepare`: tokenize a corpus once into the cache and print what came out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

data_app = typer.Typer(help="Offline corpora and tokenizers: tokenize once into a cached memmap.",
                       no_args_is_help=True)


@data_app.command("prepare")
def prepare_command(
    corpus: Annotated[Path | None, typer.Option(
        "--corpus", help="A .txt file, a directory, a .jsonl or a Parquet file "
        "(default: the Wikipedia sample embedded in gensim)")] = None,
    tokenizer: Annotated[str, typer.Option(
        "--tokenizer", help="gpt2 (vocab 50257) or bpe (trained on the corpus)")] = "bpe",
    vocab_size: Annotated[int, typer.Option(
        "--vocab-size", help="Vocab size of the trained bpe (ignored for gpt2)")] = 8192,
    text_field: Annotated[str, typer.Option(
        "--text-field", help="JSONL field / Parquet column with the text")] = "text",
    cache_dir: Annotated[Path | None, typer.Option(
        "--cache-dir", help="Cache root (default: $HOPELAB_CACHE, else ~/.cache/hopelab)")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars")] = True,
) -> None:
    """Tokenize a corpus (cached; instant when already prepared) and print a summary."""
    from rich.console import Console
    from rich.table import Table

    from hopelab.data.dataset import prepare

    started = time.perf_counter()
    data = prepare(corpus=corpus, tokenizer=tokenizer, vocab_size=vocab_size, cache_dir=cache_dir,
                   text_field=text_field, progress=progress)
    meta = data.meta
    table = Table(title="prepared data", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("corpus", meta["corpus"]),
        ("tokenizer", f"{meta['tokenizer']} (vocab {meta['vocab_size']}, end-of-text id {meta['eot_id']})"),
        ("documents", f"{meta['documents']:,} (train {meta['train_documents']:,}, val {meta['val_documents']:,})"),
        ("tokens train", f"{meta['train_tokens']:,}"),
        ("tokens val", f"{meta['val_tokens']:,}"),
        ("bytes", f"{meta['bytes']:,}"),
        ("val split", meta["val_rule"]),
        ("cache path", meta["cache_path"]),
        ("time", f"{time.perf_counter() - started:.2f} s"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    Console(soft_wrap=True).print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
