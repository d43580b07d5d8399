"""Experiment scripts, one per study: run from the repository root as ``python -m experiments.<study>``."""
