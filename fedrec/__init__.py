"""fedrec: federated, privacy-preserving recommendation with LLMs on Flower."""

__version__ = "0.1.0"
