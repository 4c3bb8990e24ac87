"""Benchmark suites run through the simulation harness (``fedrec benchmark``)."""
