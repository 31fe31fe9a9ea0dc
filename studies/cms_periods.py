"""Do CMS levels stay redundant whatever their update periods? (dissection study, Section 4.2)

The study found fast (p=8) and slow (p=32) levels converge to outputs with cosine similarity ~0.77 and
that removing CMS helps. If the levels specialise at all, it should show when the periods are far apart;
(8, 8) is the control where both levels update together.
"""

from hopelab.study import Cell, Study

PERIODS = ((4, 16), (8, 32), (16, 64), (8, 8))

STUDY = Study(
    name="cms_periods",
    description="HOPE with (fast, slow) CMS periods (4,16), (8,32), (16,64), (8,8), and without CMS",
    reference="dissection study, Figure 1 and Section 4.2",
    cells=[
        *[Cell("hope", tag=f"p{fast}-{slow}", model={"cms_periods": (fast, slow)}) for fast, slow in PERIODS],
        Cell("hope_no_cms", note="no CMS: the reference"),
    ],
    scales=("small",),
    seeds=1,
)
