"""Table 2 of the dissection study: does HOPE's loss depend on how many tokens the surprise gate lets write?

The study found its gate passed >99.9% of tokens at every absolute threshold it tried (0.005-0.1): the
surprise ½‖M(k) − v̂‖² has a floor above them. The thresholds here are placed over the measured distribution
instead: at tiny, a trained hope passes 99.9% of probe tokens at 0.02 (the dissection's τ), 96.7% at 0.05,
81.9% at 0.1, 42.6% at 0.2 and 0.8% at 0.5 (median surprise 0.17-0.21, minimum 0.021-0.025; at init the
minimum is 0.054). All are points of the probe's threshold grid, so every run also reports what the others
would pass. Then relative gating (hopelab's default: write when the surprise is above its running mean) and
the gate off. Table 2 gives each run's loss Δ against its realised pass rate, and says when τ is below the
smallest surprise the run showed (the gate could not close).
"""

from hopelab.study import Cell, Study

THRESHOLDS = (0.02, 0.05, 0.1, 0.2, 0.5)  # pass rates ≈100%, 97%, 82%, 43%, 1% on a trained tiny hope

STUDY = Study(
    name="surprise_sweep",
    description="HOPE at absolute surprise thresholds 0.02-0.5 (pass rates ≈100% to ≤20%), relative gating, "
    "and the gate off",
    reference="dissection study, Table 2 and Figure 3",
    cells=[
        *[Cell("hope", tag=f"tau{t}", model={"surprise_mode": "absolute", "surprise_threshold": t})
          for t in THRESHOLDS],
        Cell(
            "hope",
            tag="relative",
            model={"surprise_mode": "relative", "surprise_threshold": 0.0},
            note="relative gate (the default): a token writes when its surprise z-score is above 0",
        ),
        Cell("hope_no_surprise", note="gate off: every token writes"),
    ],
    scales=("small",),
    seeds=1,
)
