"""Data: interactions, splits, partitions, prompts."""
