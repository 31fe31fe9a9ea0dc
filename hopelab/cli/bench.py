"""`hopelab bench`: the benchmark (hopelab.bench, imported when the command runs), its report printed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hopelab.errors import UserError


def bench_command(
    scale: Annotated[str, typer.Option(help="tiny | small | scaled")] = "tiny",
    variants: Annotated[str, typer.Option(help="comma-separated variant names, or 'all'; a HOPE variant may carry "
                                          "+compile or +recompute (e.g. hope+recompute), any variant +cudagraphs "
                                          "or +captured (CUDA only)")] = "all",
    repeats: Annotated[int, typer.Option(min=1, help="interleaved repeats; medians are reported")] = 11,
    device: Annotated[str, typer.Option(help="auto (cuda when available) | cpu | cuda | cuda:N")] = "auto",
    out: Annotated[Path, typer.Option(help="where bench-<scale>.parquet and README-<scale>.md go")] = Path(
        "reports/bench"),
    probes: Annotated[bool, typer.Option(help="measure probe overhead (a short training with and without)")] = True,
    audit: Annotated[bool, typer.Option(help="time `hopelab audit` on a small-scale HOPE")] = True,
    reference: Annotated[bool, typer.Option(help="time hope's chunked fast path against the token-by-token "
                                            "reference")] = True,
    threads: Annotated[int, typer.Option(help="torch threads (0: leave torch's default)")] = 0,
    compile_: Annotated[bool, typer.Option("--compile", help="also time each HOPE variant with its SR-Titans chunk "
                                           "and CMS steps compiled (torch.compile; up to two minutes per variant "
                                           "on CPU)")] = False,
    recompute: Annotated[bool, typer.Option("--recompute", help="also time each HOPE variant with its SR-Titans "
                                            "chunk and CMS steps recomputed in backward (less activation "
                                            "memory)")] = False,
    cudagraphs: Annotated[bool, typer.Option("--cudagraphs", help="also time every variant named with its whole "
                                             "model compiled and replayed as CUDA graphs (CUDA only; a compile of "
                                             "minutes per variant)")] = False,
) -> None:
    """Training tokens/s per variant and ratio to the Transformer, chunked vs reference, probe overhead,
    audit wall time and memory, in one run."""
    import torch
    from rich.console import Console

    from hopelab.bench import COMPILED, CUDAGRAPHS, RECOMPUTED, run_bench
    from hopelab.bench.timing import WHOLE_MODEL
    from hopelab.config import get_scale
    from hopelab.models import HOPE_VARIANTS, VARIANTS, check_variant

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    get_scale(scale)
    names = list(VARIANTS) if variants == "all" else [v.strip() for v in variants.split(",") if v.strip()]
    if cudagraphs or any(v.endswith(WHOLE_MODEL) for v in names):
        from hopelab.models.cudagraphs import check_cudagraphs

        check_cudagraphs("cuda" if device.startswith("cuda") else "cpu")
    for v in names:  # a HOPE variant may be named with its suffix, e.g. hope+recompute alone
        graphed = v.removesuffix(CUDAGRAPHS).removesuffix(WHOLE_MODEL[1])  # any variant may take these
        base = graphed.removesuffix(COMPILED).removesuffix(RECOMPUTED)
        check_variant(base)
        if base != graphed and graphed != v:
            raise UserError(f"variant {v!r}: {' and '.join(WHOLE_MODEL)} take the whole model and no other suffix")
        if base != graphed and base not in HOPE_VARIANTS:
            raise UserError(f"variant {v!r}: {COMPILED} and {RECOMPUTED} apply to HOPE variants only")
    if "transformer" not in names:
        names.append("transformer")  # the reference every ratio is taken against
    hope = [v for v in names if v in HOPE_VARIANTS]
    plain = list(names)
    names += [v + COMPILED for v in hope if compile_] + [v + RECOMPUTED for v in hope if recompute]
    names += [v + CUDAGRAPHS for v in plain if cudagraphs and not v.endswith(CUDAGRAPHS)]
    if threads:
        torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device")
    console = Console(stderr=True)
    path = run_bench(scale, names, repeats, device, out, probes, audit, console, reference)
    typer.echo(Path(path).read_text())
    console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
