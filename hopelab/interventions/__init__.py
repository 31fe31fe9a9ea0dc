"""Interventions: what each in-context mechanism contributes inside one trained model.

    switches = applicable_switches(model)                    # by name; hopelab.interventions.switches
    with switched(model, "selfmod_writes_off"): model(x)     # the SR-Titans memories keep their initial state
"""

from hopelab.interventions.switches import (
    NONE,
    SWITCH_HELP,
    applicable_switches,
    applies,
    intervention,
    switched,
)

__all__ = ["NONE", "SWITCH_HELP", "applicable_switches", "applies", "intervention", "switched"]
