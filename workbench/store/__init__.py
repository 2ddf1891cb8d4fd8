"""The activation store: a DuckDB catalog plus Parquet shards (see catalog.py for the layout)."""

from workbench.store.catalog import Store, check_run_name, make_run_name
from workbench.store.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "Store", "check_run_name", "make_run_name"]
