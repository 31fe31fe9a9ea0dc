"""The recall study's quick cell set: every variant at 2 and 4 key-value pairs, short sequences, one seed;
under ten minutes on a 2-core CPU (`hopelab study recall_quick --jobs 1`)."""

from hopelab.study import Study
from studies.recall import recall_cells

STUDY = Study(
    name="recall_quick",
    description="the recall study in ten minutes: every variant on MQAR at 2 and 4 pairs, len 32, one seed",
    reference="studies/recall.py",
    cells=recall_cells(pairs=(2, 4), lengths=(32,), widths=(64,), steps=300, ckpt_every=100),
    scales=("tiny",),
    seeds=1,
)
