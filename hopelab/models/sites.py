"""Memory sites: where a model keeps in-context (fast) memories, found from the layer objects themselves.

    for site in model.memory_sites():
        site.name        # "blocks.0.titans", "blocks.1.cms.levels.0": the module's dotted name in the model
        site.kind        # "selfmod" | "titans" | "cms"
        site.components  # its memories: ("k", "v", "q", "eta", "alpha", "memory"), ("memory",), () for CMS

Sites come from isinstance checks over `model.blocks`, never from patterns on module names, so renaming an
attribute renames the sites with it. A site's name is the prefix of everything the model reports about it:
`model.initial_states()` keys are f"{site.name}.{component}" (a CMS level: its name alone), and its hook
points are f"{site.name}.hook_*".
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from hopelab.layers.cms import CMSLevel
from hopelab.layers.self_ref_titans import SelfReferentialTitans
from hopelab.layers.titans import TitansMemory


@dataclass(frozen=True)
class MemorySite:
    name: str  # the module's dotted name in the model
    layer: int  # block index
    kind: str  # "selfmod" (SelfReferentialTitans) | "titans" (TitansMemory) | "cms" (CMSLevel)
    level: int | None  # CMS level index (its place among the block's levels), else None
    components: tuple[str, ...]  # the memories it holds; () for a CMS level (one fast MLP)
    module: nn.Module


def memory_sites(model: nn.Module) -> list[MemorySite]:
    """Every in-context memory of `model`, block by block in module order; [] for a model without any."""
    names = {id(mod): name for name, mod in model.named_modules()}
    sites: list[MemorySite] = []
    for layer, block in enumerate(getattr(model, "blocks", ())):
        level = 0
        for mod in block.modules():
            name = names[id(mod)]
            if isinstance(mod, SelfReferentialTitans):
                sites.append(MemorySite(name, layer, "selfmod", None, tuple(mod.components), mod))
            elif isinstance(mod, TitansMemory):
                sites.append(MemorySite(name, layer, "titans", None, tuple(mod.components), mod))
            elif isinstance(mod, CMSLevel):
                sites.append(MemorySite(name, layer, "cms", level, (), mod))
                level += 1
    return sites
