"""Figures, kept apart from the fitting/metric code (one submodule per stage)."""
