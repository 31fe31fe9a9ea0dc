"""The recall study's quick cell set: every variant at 1 and 2 key-value pairs with 8 queries, short sequences,
one seed, 300 steps (`hopelab study recall_quick --jobs 2`), a few minutes on an idle 2-core CPU. A smoke set:
at len 32 the slow CMS level (period 32) never updates inside a sequence, so it gets no gradient."""

from hopelab.study import Study
from studies.recall import recall_cells

STUDY = Study(
    name="recall_quick",
    description="the recall study's quick smoke set: every variant on MQAR at 1 and 2 pairs, len 32, one seed",
    reference="studies/recall.py",
    cells=recall_cells(pairs=(1, 2), lengths=(32,), widths=(64,), steps=300, ckpt_every=100, queries=8),
    scales=("tiny",),
    seeds=1,
)
