"""What on-device recommendation returns, and its table: standard library only, so that
asking a resident service (:mod:`.service`) loads nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recommendation:
    """One recommended catalog item and its score: the LLM's ``logit(Yes) - logit(No)``,
    or the collaborative model's when it ranks alone.
    """

    item: str
    title: str
    score: float


def format_recommendations(recommendations: list[Recommendation]) -> str:
    """A table of rank, item id, title and score."""
    item_width = max([len("item"), *(len(r.item) for r in recommendations)])
    title_width = max([len("title"), *(len(r.title) for r in recommendations)])
    lines = [f"{'rank':>4}  {'item':<{item_width}}  {'title':<{title_width}}  {'score':>8}"]
    for rank, r in enumerate(recommendations, start=1):
        lines.append(f"{rank:>4}  {r.item:<{item_width}}  {r.title:<{title_width}}  {r.score:>8.4f}")
    return "\n".join(lines)
