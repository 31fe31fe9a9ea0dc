"""The paper's Figure 7 question (does adding slower CMS levels help?) at a size this CPU trains in about half
an hour: HOPE with 1, 2, 3 and 4 CMS levels whose periods keep the paper's ratio of 4 from level to level,
scaled down 16 times: 32, 128, 512 and 2048 tokens (the paper: 512, 2K, 8K, 32K), on streams of 24 windows of
128 tokens (3,072 tokens, read over 24 optimizer steps with every fast state carried; hopelab.models.streaming).

As in the paper-sized setting (studies/cms_persistent.py: the 32K level updates once in a 96-window stream,
after two thirds of it), the slowest level here updates once per stream, at token 2048, and the last 8
windows read what it wrote. The levels of 128 tokens and more are persistent: a level updates at the end of
each period, so only a later window reads what it writes, which a run on independent windows never does.

Evidence, on the same val streams for every cell: the final loss (Table 1) with within-run intervals over the
probe streams (analysis.within_run), and, inside each trained model, the intervention
`cms_writes_off_from_128` (the persistent levels keep their initial weights, the faster ones write): Δ > 0
with an interval that excludes 0 means the model uses what its slow levels wrote in earlier windows.
HOPE with a static MLP in place of the CMS is the reference for the CMS as a whole.
Cost: 600 steps (25 batches of 8 streams) per run, 5 to 8 min each on one CPU thread beside a two-job study
(no CMS 309 s, 1-3 levels 373-451 s), final probes included; run it with OMP_NUM_THREADS=1 on a busy machine
(two torch threads on two busy cores made the same run several times slower).
"""

from hopelab.study import Cell, Study
from studies.cms_persistent import paper_cms

PERIODS = (32, 128, 512, 2048)  # the paper's 512, 2K, 8K, 32K divided by 16
SEGMENTS = 24  # windows per stream: 3,072 tokens, past the 2048 level's first update
TRAIN = {"context_len": 128, "segments": SEGMENTS, "steps": 25 * SEGMENTS, "ckpt_every": 5 * SEGMENTS,
         "val_batches": 1}

STUDY = Study(
    name="cms_streams",
    description="HOPE with 1-4 CMS levels (32, 128, 512, 2048 tokens) on 3,072-token streams: Figure 7 at CPU size",
    reference="Nested Learning, Figure 7 (number of CMS levels), periods scaled down 16x",
    cells=[
        Cell("hope", **paper_cms(PERIODS, **TRAIN), note=f"4 levels {PERIODS}: the reference"),
        *[Cell("hope", tag=f"levels{n}", **paper_cms(PERIODS[:n], **TRAIN), note=f"periods {PERIODS[:n]}")
          for n in (1, 2, 3)],
        Cell("hope_no_cms", **paper_cms(PERIODS, **TRAIN), note="a static MLP in place of the CMS"),
    ],
    scales=("tiny",),
    seeds=1,
)
