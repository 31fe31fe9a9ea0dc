"""Does M3 (the Nested Learning paper's Algorithm 1) train HOPE or the Transformer better than AdamW?

M3 takes the matrices (Newton–Schulz-orthogonalised fast and slow momenta over an accumulated second moment),
AdamW the rest, at the same base lr and schedule; the AdamW cells are the reference. The paper reports M3 on
vision tasks only; this asks the question at language modelling, at CPU size.
"""

from hopelab.study import Cell, Study

STUDY = Study(
    name="optimizer",
    description="AdamW vs M3 (Algorithm 1 on matrices, AdamW on the rest) on hope and the Transformer",
    reference="Nested Learning, Algorithm 1 (M3)",
    cells=[
        *[Cell(v, tag="adamw", note="AdamW on every parameter: the reference") for v in ("hope", "transformer")],
        *[Cell(v, tag="m3", train={"optimizer": "m3"}, note="M3 on the matrices") for v in ("hope", "transformer")],
    ],
    scales=("tiny",),
    seeds=2,
)
