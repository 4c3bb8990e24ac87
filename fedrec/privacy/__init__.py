"""Privacy: record-level DP-SGD (Opacus), persistent accountants, client-level DP and
SecAgg+ secure aggregation.
"""
