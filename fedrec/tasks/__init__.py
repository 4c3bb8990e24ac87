"""Recommendation tasks, one folder each: its examples and prompt text, the answer or
label it learns, its loss, its evaluation and its baselines. Shared here: the local
training loop (:mod:`.training`) and the accuracy metrics (:mod:`.metrics`).
"""
