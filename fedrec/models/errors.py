"""Errors of the model layer."""


class BackboneError(ValueError):
    """A backbone cannot be found, loaded, or given an adapter."""
