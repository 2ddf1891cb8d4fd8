"""Read-only SQL against a store, for the CLI and the app.

Three layers of defence, so nothing typed can change the store or read outside it:
1. the statement is parsed and must be a single SELECT (SHOW, DESCRIBE, SUMMARIZE
   and WITH ... SELECT parse as SELECT) or EXPLAIN;
2. the connection is read-only, so the catalog cannot change;
3. the connection is sandboxed to the store's shard files, with the configuration
   locked, so COPY, ATTACH, INSTALL/LOAD and read_csv/read_text of other paths fail.
Long queries are interrupted after a time limit, and results are cut at a row limit.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from workbench.errors import ReadOnlySqlError
from workbench.store.catalog import Store

_ALLOWED = {duckdb.StatementType.SELECT: "SELECT", duckdb.StatementType.EXPLAIN: "EXPLAIN"}


@dataclass
class QueryResult:
    table: pa.Table
    truncated: bool  # more rows existed than max_rows


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise ReadOnlySqlError(f"SQL does not parse: {exc}") from exc
    if len(statements) != 1:
        raise ReadOnlySqlError(f"Give exactly one statement; this has {len(statements)}. Separate queries must run separately.")
    kind = statements[0].type
    if kind not in _ALLOWED:
        name = str(kind).split(".")[-1]
        raise ReadOnlySqlError(
            f"{name} statements are refused: SQL here is read-only. Use SELECT (or SHOW, DESCRIBE, SUMMARIZE, EXPLAIN). "
            "Data changes go through workbench commands (harvest, train, ...)."
        )


def run_query(store: Store, sql: str, max_rows: int = 10_000, timeout_s: float = 30.0) -> QueryResult:
    with store.reader(sandboxed=True) as con:
        check_read_only(con, sql)
        timer = threading.Timer(timeout_s, con.interrupt)
        timer.start()
        try:
            reader = con.sql(sql).to_arrow_reader(min(max_rows + 1, 100_000))
            batches, n = [], 0
            for batch in reader:
                batches.append(batch)
                n += batch.num_rows
                if n > max_rows:
                    break
            table = pa.Table.from_batches(batches, schema=reader.schema)
        except duckdb.InterruptException as exc:
            raise ReadOnlySqlError(f"Query stopped after the {timeout_s:.0f}s time limit. Narrow it (WHERE, LIMIT) and retry.") from exc
        except duckdb.PermissionException as exc:
            raise ReadOnlySqlError(f"Refused: queries may read only this store's own tables and shards ({exc}).") from exc
        except duckdb.Error as exc:
            message = str(exc)
            if "parquet" in message.lower() and "shards/" in message:
                message += "\nA shard file looks damaged: run `workbench store verify STORE` to find and repair it."
            raise ReadOnlySqlError(message) from exc
        finally:
            timer.cancel()
    return QueryResult(table=table.slice(0, max_rows), truncated=table.num_rows > max_rows)
