"""fedrec's wire protocol: record names, config and metric keys, the decline reply,
the SecAgg+ stages as typed records, and the grid plumbing both server wrappers use.
"""
