"""In-context recall (synthetic MQAR): which of HOPE's mechanisms carries recall, and up to how many pairs?

Every variant is trained on multi-query associative recall (hopelab.data.synthetic: key-value pairs, then
queries of earlier keys at power-law distances; loss and accuracy on the answers only) at a growing number of
pairs. The recall probe measures exact-match accuracy on a held-out batch, overall and by distance back to the
key; the report draws accuracy against pairs (Figure 7) and the capacity per variant (Table 4).

Sizing (2-core CPU, --jobs 2): the memory variants learn MQAR slowly (Titans at 2 pairs, len 32: 5% accuracy
at step 375, 47% at step 1000), so runs need ~1000 steps. Measured on an idle 2-core VM: the quick set (14 runs x
300 steps, len 32) takes 3m34s wall; here a hope-type run (800 steps, len 64, batch 16) takes ~7.5 min with two
running at once, so the 42 runs take about 1h45m on two cores. len 64 rather than 32:
the slow CMS level (period 32) must update inside a sequence to be trained at all. On a GPU, add pairs 16-64
at len 256 and a second width. hope_attention (attention + the same CMS) is the control for what SR-Titans adds
over attention. (One hope run here once went non-finite inside a run of 34 filler tokens; that runaway is what
the Huber inner loss, `inner_error_clip`, now stops: README, "Stability".)
"""

from hopelab.study import Cell, Study

VARIANTS = ("hope", "hope_no_selfmod", "hope_no_cms", "hope_no_surprise", "hope_attention", "titans", "transformer")
# the measurements: lr 3e-3 with warmup and a cosine decay; batches of 16 sequences
TRAIN = {"lr": 3e-3, "warmup_steps": 50, "schedule": "cosine", "batch_size": 16, "val_batches": 4}


def recall_cells(pairs: tuple[int, ...], lengths: tuple[int, ...], widths: tuple[int, ...], steps: int,
                 ckpt_every: int) -> list[Cell]:
    """One cell per variant x sequence length x width x number of pairs; the tag names what varies."""
    cells = []
    for length in lengths:
        for dim in widths:
            for p in pairs:
                tag = f"p{p}" + (f"-len{length}" if len(lengths) > 1 else "") + (f"-d{dim}" if len(widths) > 1 else "")
                data = f"synthetic:mqar?pairs={p}&len={length}"
                train = {**TRAIN, "steps": steps, "ckpt_every": ckpt_every}
                cells += [Cell(v, tag=tag, data=data, model={"dim": dim}, train=train) for v in VARIANTS]
    return cells


STUDY = Study(
    name="recall",
    description="every variant on synthetic MQAR at 2, 4 and 8 key-value pairs: recall accuracy and capacity",
    reference="zoology's MQAR; the dissection study has no recall measurement",
    cells=recall_cells(pairs=(2, 4, 8), lengths=(64,), widths=(64,), steps=800, ckpt_every=200),
    scales=("tiny",),
    seeds=2,
)
