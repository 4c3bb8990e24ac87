"""Ranking (leave-one-out top-K): the user's held-out liked item among sampled unrated
items, scored as preference questions; HR@10 and NDCG@10, beside classic baselines.
"""
