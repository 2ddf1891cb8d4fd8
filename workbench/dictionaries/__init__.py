"""Sparse dictionaries: one file per family, one shared forward signature (see base.py)."""

from workbench.dictionaries.base import DictionaryConfig, SparseCoder, SparseOutput, load_dictionary, make_dictionary

__all__ = ["DictionaryConfig", "SparseCoder", "SparseOutput", "load_dictionary", "make_dictionary"]
