"""In-context recall (synthetic MQAR): which of HOPE's mechanisms carries recall, and up to how many pairs?

Every variant is trained on multi-query associative recall (hopelab.data.synthetic: key-value pairs, then
queries of earlier keys at power-law distances; loss and accuracy on the answers only) at a growing number of
pairs. The recall probe measures exact-match accuracy on a held-out batch, overall and by distance back to the
key; the report draws accuracy against pairs (Figure 6) and the capacity per variant (Table 3). Sized for a
2-core CPU: about an hour with --jobs 2 (`recall_quick` is the ten-minute version). On a GPU, add pairs 32 and
64 at len 256 and a second width.
"""

from hopelab.study import Cell, Study

VARIANTS = ("hope", "hope_no_selfmod", "hope_no_cms", "hope_no_surprise", "titans", "transformer")
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
    description="every variant on synthetic MQAR at 2-16 key-value pairs: recall accuracy and capacity",
    reference="zoology's MQAR; the dissection study has no recall measurement",
    cells=recall_cells(pairs=(2, 4, 8, 16), lengths=(64,), widths=(64,), steps=600, ckpt_every=100),
    scales=("tiny",),
    seeds=2,
)
