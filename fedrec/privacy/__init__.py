"""Privacy: Opacus DP-SGD and persistent accountants."""
