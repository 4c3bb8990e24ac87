"""Client-level DP: each client clips its update (:mod:`.mod`, the client's mod), the
server's Strategy wrapper noises the sum and accounts the release (:mod:`.strategy`),
with the amplification of Poisson-sampled clients when on (:mod:`.sampling`).
"""
