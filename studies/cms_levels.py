"""Figure 7 of the Nested Learning paper at CPU size: HOPE with 1, 2, 3 and 4 CMS levels (chunk sizes 512, then
2K, 8K and 32K added), each trained on 49K-token streams (studies/cms_persistent.py has the setting and its
cost). The paper finds more levels, and so slower ones, help on long-context tasks; here the question is the
language-modelling loss on the same streams.
"""

from hopelab.study import Cell, Study
from studies.cms_persistent import PAPER_PERIODS, paper_cms

STUDY = Study(
    name="cms_levels",
    description="HOPE with 1, 2, 3 and 4 CMS levels (512, 2K, 8K, 32K) on 49K-token streams",
    reference="Nested Learning, Figure 7 (number of CMS levels)",
    cells=[Cell("hope", tag=f"levels{n}", **paper_cms(PAPER_PERIODS[:n]), note=f"periods {PAPER_PERIODS[:n]}")
           for n in range(1, 5)],
    scales=("tiny",),
    seeds=1,
)
