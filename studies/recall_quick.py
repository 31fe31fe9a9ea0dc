"""The recall study's quick cell set: every variant at 2 and 4 key-value pairs, short sequences, one seed, 300
steps (`hopelab study recall_quick --jobs 1`): 16 min summed over runs on a 2-core CPU shared with other jobs
(load 4-6), likely under ten alone (not measured). A smoke set: at 300 steps only the Transformer and Titans
have begun to recall, and at len 32 the slow CMS level (period 32) never updates inside a sequence, so it gets
no gradient."""

from hopelab.study import Study
from studies.recall import recall_cells

STUDY = Study(
    name="recall_quick",
    description="the recall study's quick smoke set: every variant on MQAR at 2 and 4 pairs, len 32, one seed",
    reference="studies/recall.py",
    cells=recall_cells(pairs=(2, 4), lengths=(32,), widths=(64,), steps=300, ckpt_every=100),
    scales=("tiny",),
    seeds=1,
)
