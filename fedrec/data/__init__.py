"""Data: loading and validating interactions and item text, drawing users and
assigning them to clients. Knows nothing of tasks or models.
"""
