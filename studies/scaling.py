"""Figure 4 of the dissection study: the ablation at `small` and `scaled`.

Self-modification's importance grew 4.5x from small to scaled, and the Transformer-HOPE order reversed.
"""

import dataclasses

from studies.ablation import STUDY as ABLATION

STUDY = dataclasses.replace(
    ABLATION,
    name="scaling",
    description="the ablation at small and scaled: how component importance changes with scale",
    reference="dissection study, Figure 4 and Section 4.5",
    scales=("small", "scaled"),
)
