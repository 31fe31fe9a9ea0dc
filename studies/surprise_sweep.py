"""Table 2 of the dissection study: is the surprise gate selective at any threshold?

The study found the gate passes >99.9% of tokens at every absolute threshold; it suggests a relative
surprise metric instead, which the last cell tests (write when surprise is above its running mean).
"""

from hopelab.study import Cell, Study

THRESHOLDS = (0.005, 0.01, 0.02, 0.05, 0.1)

STUDY = Study(
    name="surprise_sweep",
    description="HOPE at absolute surprise thresholds 0.005-0.1, plus relative gating and the gate off",
    reference="dissection study, Table 2 and Figure 3",
    cells=[
        *[Cell("hope", tag=f"tau{t}", model={"surprise_threshold": t}) for t in THRESHOLDS],
        Cell(
            "hope",
            tag="relative",
            model={"surprise_mode": "relative", "surprise_threshold": 0.0},
            note="relative gate: a token writes when its surprise z-score is above 0",
        ),
        Cell("hope_no_surprise", note="gate off: every token writes (the reference)"),
    ],
    scales=("small",),
    seeds=1,
)
