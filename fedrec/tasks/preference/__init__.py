"""Preference (TALLRec-style): will the user like this item, given their history? The
LLM answers Yes or No; trained with binary cross-entropy on the like label (rating
above ``like-threshold``), evaluated by AUC on each user's held-out interactions.
"""
