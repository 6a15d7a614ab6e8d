"""Committed scripts that precompute results shipped in data/results/."""
