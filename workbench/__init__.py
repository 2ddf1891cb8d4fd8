"""Mechanistic-interpretability workbench: hooked models, a DuckDB activation store, and the analyses built on it."""

__version__ = "0.1.0"
