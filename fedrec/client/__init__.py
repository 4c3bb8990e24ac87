"""The fedrec ClientApp and local training."""
