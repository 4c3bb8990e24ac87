"""The fedrec ServerApp: strategy wiring, measurement, results."""
