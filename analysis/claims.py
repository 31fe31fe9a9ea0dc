"""A finding of a report: the sentence it says and the numbers it rests on."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Claim:
    """One finding of the report: its Markdown sentence and the numbers it rests on."""

    topic: str
    text: str
    numbers: dict = field(default_factory=dict)


def claim(topic: str, lead: str, parts: list[str], numbers: dict | None = None) -> Claim | None:
    """One sentence: `lead` then the parts joined by "; "; None when there is nothing to say."""
    return Claim(topic, lead + "; ".join(parts) + ".", numbers or {}) if parts else None
