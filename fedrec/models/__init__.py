"""Models: frozen backbones with a LoRA adapter, as parts behind the :class:`Scorer`
façade (kinds, LoRA, split forward, heads, prompt format), the adapter on the wire and
on disk. Knows nothing of tasks: what a prompt asks is given by the caller.
"""
