"""What every command module shares: building a command from its Config, and printing tables and sizes."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from workbench.cli.options import add_config_options, config_from_args


def make_parser(
    prog: str, description: str, epilog: str = "", parser_factory: Callable[..., Any] | None = None, **kwargs: Any
) -> argparse.ArgumentParser:
    """A parser whose description and examples keep their line breaks."""
    factory = parser_factory or argparse.ArgumentParser
    return factory(
        prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs
    )


def add_command(
    sub,
    name: str,
    help_text: str,
    config: type,
    run: Callable[[Any], Any],
    report: Callable[[Any, Any], int | None],
    *,
    description: str = "",
    epilog: str = "",
    flags: dict[str, list[str]] | None = None,
    choices: dict[str, list[str]] | None = None,
    helps: dict[str, str] | None = None,
    parsers: dict[str, Callable[[str], Any]] | None = None,
    bare: dict[str, Any] | None = None,
) -> argparse.ArgumentParser:
    """Add `name` to a subparsers object: options from `config`'s fields; running it calls `run(config)`, then
    `report(config, result)` prints what the user needs to know and returns the exit status (None is 0)."""
    parser = sub.add_parser(
        name,
        help=help_text,
        description=description or help_text[:1].upper() + help_text[1:].replace("%%", "%"),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_options(parser, config, flags=flags, choices=choices, helps=helps, parsers=parsers, bare=bare)

    def execute(args: argparse.Namespace) -> int:
        settings = config_from_args(config, args)
        return report(settings, run(settings)) or 0

    execute.config_type = config  # type: ignore[attr-defined]  # lets tests compare option defaults with the Config
    parser.set_defaults(func=execute)
    return parser


def print_table(table, max_rows: int = 10_000) -> None:
    """Render an Arrow table with DuckDB's box renderer (one way to print tables everywhere)."""
    import duckdb

    con = duckdb.connect()
    con.from_arrow(table).show(max_rows=max_rows, max_width=200)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)
