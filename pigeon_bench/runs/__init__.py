"""Runs: the run folder contract (folder)."""
