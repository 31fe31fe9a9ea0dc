"""Which learning rate and schedule make the models learn in a study's budget? (it picked tiny's defaults)

Each variant family at several peak learning rates, with a constant rate or with linear warmup then cosine
decay to 10% of the peak (hopelab.lit.module.lr_factor). Read the final losses against the unigram and
bigram references of the data (Table 1's reference rows): a cell near the unigram line has learned token
frequencies only. At tiny, hope and the Transformer at 1e-3, 3e-3 and 1e-2 (README, "What a study's numbers
mean", has the numbers); at small and scaled also the dissection study's 3e-4, and Titans.
"""

from hopelab.study import Cell, Study

WARMUP = 30  # steps of linear warmup before the cosine decay (10% of tiny's 300 steps)
SCHEDULES = {"const": {"schedule": "constant", "warmup_steps": 0},
             "cos": {"schedule": "cosine", "warmup_steps": WARMUP}}
TINY_LRS = (1e-3, 3e-3, 1e-2)  # hope and the Transformer; CPU-sized
LRS = (3e-4, 1e-3, 3e-3)  # at small and scaled, where 3e-4 is the dissection study's; Titans too


def _scales(variant: str, lr: float) -> tuple[str, ...]:
    return (("tiny",) if variant != "titans" and lr in TINY_LRS else ()) + (("small", "scaled") if lr in LRS else ())


STUDY = Study(
    name="lr_sweep",
    description="peak learning rate x (constant | warmup + cosine) for HOPE, Titans and the Transformer",
    reference="hopelab's own: the training regime of the ablation",
    cells=[Cell(variant, tag=f"lr{lr:g}-{name}", train={"lr": lr, **sched}, scales=_scales(variant, lr))
           for variant in ("hope", "titans", "transformer") for lr in sorted({*LRS, *TINY_LRS})
           for name, sched in SCHEDULES.items() if _scales(variant, lr)],
    scales=("tiny",),
    seeds=1,
)
