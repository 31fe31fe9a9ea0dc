"""Does M3 (the Nested Learning paper's Algorithm 1) train HOPE or the Transformer better than AdamW?

M3 takes the matrices (Newton–Schulz-orthogonalised fast and slow momenta over an accumulated second moment),
AdamW the rest; the AdamW cells, at the scale's own lr, are the reference. M3 gets its own rates: as printed,
Algorithm 1 divides an orthogonalised momentum (entries ~1/√n) by √V with V ≈ g² early on, so its first steps
move each weight by about lr/(√n |g|), far more than AdamW's lr; on a toy problem it diverged at 3e-3 where AdamW
trained (hopelab/optim/m3.py). The paper reports M3 on vision tasks only; this asks the question at language
modelling, at CPU size. One seed: the report compares runs on the shared probe sequences (within-run intervals).

As printed, the momenta and V are sums (V grows with t, so the step shrinks like 1/√t); the paper's prose calls
them moving averages. `m3_ema` is that reading. Its step stays about lr/(√n |g|) per weight (n the larger side
of the matrix): at tiny width and gradients of 1e-3 to 1e-4, 60 to 600 times lr, so AdamW's per-weight step at
3e-3 corresponds to lr of 5e-6 to 5e-5: its cells bracket that range.
"""

from hopelab.study import Cell, Study

M3_LRS = (3e-4, 1e-3)
M3_EMA_LRS = (1e-5, 1e-4)

STUDY = Study(
    name="optimizer",
    description="AdamW vs M3 (Algorithm 1 as printed and as its prose reads, on matrices) on hope and the Transformer",
    reference="Nested Learning, Algorithm 1 (M3)",
    cells=[
        *[Cell(v, tag="adamw", note="AdamW on every parameter at the scale's lr: the reference")
          for v in ("hope", "transformer")],
        *[Cell(v, tag=f"m3-lr{lr:g}", train={"optimizer": "m3", "lr": lr}, note="M3 on the matrices")
          for v in ("hope", "transformer") for lr in M3_LRS],
        *[Cell(v, tag=f"m3ema-lr{lr:g}", train={"optimizer": "m3_ema", "lr": lr},
               note="M3 with moving-average momenta (the prose's reading)")
          for v in ("hope", "transformer") for lr in M3_EMA_LRS],
    ],
    scales=("tiny",),
    seeds=1,
)
