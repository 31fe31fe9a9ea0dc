"""The paper's Continuum Memory System: four levels at chunk sizes 512, 2K, 8K and 32K tokens (Nested Learning,
Section 7 and Figure 7), trained on long streams at a CPU-sized width.

A level updates once per period, so at a 512-token context only streaming lets the slow levels move: each
sample is a stream of 96 windows of 512 tokens (49,152 tokens, read over 96 optimizer steps with every fast
state carried; hopelab.models.streaming), in which the 32K level updates once and its new weights are read by
the last 32 windows. The embedded corpus's val split (58.7K tokens at BPE-2048) holds one such stream.

Cells, all streamed and so scored on the same val streams: HOPE; HOPE with a static MLP in place of the CMS
(the reference); Hope-Attention (attention per window, the CMS persists). A run on independent windows
(segments=1) would be scored on other text, one window at a time, so it is not a cell here.
Cost at dim 64, batch 8, one CPU thread: ~2.7 s per HOPE step, ~1.0 s per Hope-Attention step, and ~1 s per
HOPE window of validation (96 windows a checkpoint, the probe forward as many again).
"""

from hopelab.study import Cell, Study

PAPER_PERIODS = (512, 2048, 8192, 32768)
STREAM = 96  # windows per stream: 96 x 512 = 49,152 tokens, past the 32K level's first update
# long streams at tiny width: one val batch (8 streams), a checkpoint every two streams
LONG = {"context_len": 512, "segments": STREAM, "val_batches": 1, "ckpt_every": 2 * STREAM, "steps": 10 * STREAM}


def paper_cms(periods: tuple[int, ...] = PAPER_PERIODS, **train) -> dict:
    """The model and train overrides of a streamed run with CMS `periods` (the keys of LONG, overridable; its
    context_len goes to the model)."""
    train = {**LONG, **train}
    return {"model": {"context_len": train.pop("context_len"), "cms_periods": periods}, "train": train}


STUDY = Study(
    name="cms_persistent",
    description="HOPE with the paper's CMS levels 512/2K/8K/32K on 49K-token streams, vs no CMS and Hope-Attention",
    reference="Nested Learning, Section 7 and Figure 7 (CMS chunk sizes)",
    cells=[
        Cell("hope", tag="streamed", **paper_cms(), note="96 windows per stream, every fast state carried"),
        Cell("hope_no_cms", tag="streamed", **paper_cms(), note="a static MLP in place of the CMS: the reference"),
        Cell("hope_attention", tag="streamed", **paper_cms(), note="attention per window, the CMS carried"),
    ],
    scales=("tiny",),
    seeds=1,
)
