"""Privacy mechanisms, each with both its halves in one sub-package:
``record_level`` (Opacus DP-SGD on the client), ``client_level`` (the client mod that
clips and a Strategy wrapper that noises and accounts), ``secagg`` (SecAgg+: the
client mod and the server's grid). Knows nothing of recommendation.
"""
