"""The simulation harness: runs, baselines, reports."""
