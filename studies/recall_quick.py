"""The recall study's quick cell set: every variant at 2 and 4 key-value pairs, short sequences, one seed, 300
steps (`hopelab study recall_quick --jobs 2`): 3m34s wall on an idle 2-core CPU (6m44s summed over runs). A smoke
set: at 300 steps only the Transformer, Hope-Attention and Titans have begun to recall, and at len 32 the slow CMS
level (period 32) never updates inside a sequence, so it gets no gradient."""

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
