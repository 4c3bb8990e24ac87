"""Text rendering of preference examples (TALLRec-style, design §4)."""

from __future__ import annotations

from .examples import PreferenceExample

SYSTEM_PROMPT = "You are a recommender system."


def render_preference_prompt(example: PreferenceExample, titles: dict[str, str]) -> str:
    """The user's history with like/dislike marks, then the question about the target."""
    lines = [f"- {titles[item]}: {'liked' if liked else 'disliked'}" for item, liked in example.history]
    return (
        "A user rated these items, oldest first:\n"
        + "\n".join(lines)
        + f"\nWill the user like {titles[example.item]}? Answer Yes or No."
    )
