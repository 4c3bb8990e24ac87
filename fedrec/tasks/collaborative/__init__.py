"""The collaborative model's task: BPR on (user, liked item) records, trained on the
clients (optionally with DP-SGD), and evaluated on the preference and ranking tasks'
held-out interactions by folding the evaluation users in.
"""
