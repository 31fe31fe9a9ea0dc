"""Table 1 of the dissection study: remove one HOPE mechanism at a time, against Titans and a Transformer.

At `scaled` the study also trains a Transformer whose parameter count matches HOPE's (81.2M vs 73.1M):
increasing the Transformer's capacity does not close the gap.
"""

from hopelab.study import Cell, Study

CELLS = [
    Cell("hope", note="full HOPE: CMS + self-modification + surprise gate"),
    Cell("hope_no_cms", note="CMS replaced by a static MLP"),
    Cell("hope_no_selfmod", note="static projections; only M_memory adapts"),
    Cell("hope_no_surprise", note="surprise gate off"),
    Cell("titans", note="original Titans memory"),
    Cell("transformer", note="same width and depth"),
    Cell("transformer_matched", scales=("scaled",), note="width solved to match HOPE's parameter count"),
]

STUDY = Study(
    name="ablation",
    description="component ablation: each HOPE mechanism removed in turn, vs Titans and a Transformer",
    reference="dissection study, Table 1 and Figure 4",
    cells=CELLS,
    scales=("small",),
    seeds=2,  # paired intervals everywhere; at tiny `make study` trains the 12 runs in about 12 min on 2 cores
)
