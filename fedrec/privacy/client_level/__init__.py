"""Client-level DP: each client clips its update (:mod:`.mod`, the client's mod) and the
server's Strategy wrapper noises the mean and accounts the release (:mod:`.strategy`).
"""
