"""Does M3 (the Nested Learning paper's Algorithm 1) train HOPE or the Transformer better than AdamW?

M3 takes the matrices (Newton–Schulz-orthogonalised fast and slow momenta over an accumulated second moment),
AdamW the rest; the AdamW cells, at the scale's own lr, are the reference. M3 gets its own rates: as printed,
Algorithm 1 divides an orthogonalised momentum (entries ~1/√n) by √V with V ≈ g² early on, so its first steps
move each weight by about lr/(√n |g|), far more than AdamW's lr; on a toy problem it diverged at 3e-3 where AdamW
trained (hopelab/optim/m3.py). The paper reports M3 on vision tasks only; this asks the question at language
modelling, at CPU size. One seed: the report compares runs on the shared probe sequences (within-run intervals).
"""

from hopelab.study import Cell, Study

M3_LRS = (3e-4, 1e-3)

STUDY = Study(
    name="optimizer",
    description="AdamW vs M3 (Algorithm 1 on matrices, AdamW on the rest) on hope and the Transformer",
    reference="Nested Learning, Algorithm 1 (M3)",
    cells=[
        *[Cell(v, tag="adamw", note="AdamW on every parameter at the scale's lr: the reference")
          for v in ("hope", "transformer")],
        *[Cell(v, tag=f"m3-lr{lr:g}", train={"optimizer": "m3", "lr": lr}, note="M3 on the matrices")
          for v in ("hope", "transformer") for lr in M3_LRS],
    ],
    scales=("tiny",),
    seeds=1,
)
