"""SecAgg+ secure aggregation: the client's mod (:mod:`.mod`) and the server's grid
wrapper (:mod:`.grid`, one round in :mod:`.round`), over the cryptography
(:mod:`.crypto`) and arithmetic (:mod:`.quantization`) both sides share; the stages'
records are in :mod:`fedrec.protocol.secagg`. Importing this package loads no torch.
"""
