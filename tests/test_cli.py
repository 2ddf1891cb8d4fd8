"""The CLI is built from the entry points' Configs: every option documented, every default the Config's own."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from workbench.cli import COMMANDS, build_parser
from workbench.cli.options import add_config_options, config_from_args, field_docs, int_with_suffix


@dataclass
class _Inner:
    rate: float = 0.5
    """How fast."""


@dataclass
class _Example:
    store: str
    """The store directory."""
    names: list[str]
    """Comma-separated names."""
    tokens: int = 2_000
    """How many tokens."""
    layers: list[int] | None = None
    """Which layers (default: all)."""
    verbose: bool = False
    """Say more."""
    inner: _Inner = field(default_factory=_Inner)
    """Nested settings."""


def _parse(*argv: str) -> _Example:
    parser = argparse.ArgumentParser()
    add_config_options(parser, _Example)
    return config_from_args(_Example, parser.parse_args(list(argv)))


def test_options_follow_the_config_types_and_defaults():
    parsed = _parse(
        "--store", "s", "--names", "a, b,c", "--tokens", "2M", "--layers", "0,3", "--verbose", "--rate", "0.25"
    )
    assert parsed == _Example("s", ["a", "b", "c"], 2_000_000, [0, 3], True, _Inner(0.25))
    assert _parse("--store", "s", "--names", "x") == _Example("s", ["x"])
    with pytest.raises(SystemExit):
        _parse("--names", "x")  # --store is required: the field has no default
    with pytest.raises(SystemExit):
        _parse("--store", "s", "--names", "x", "--layers", "one,two")


def test_field_docs_are_the_docstrings_under_the_fields():
    assert field_docs(_Example)["layers"] == "Which layers (default: all)."
    assert field_docs(_Inner) == {"rate": "How fast."}


@pytest.mark.parametrize(
    "text, value", [("2M", 2_000_000), ("500k", 500_000), ("1.5b", 1_500_000_000), ("4_096", 4096), ("17", 17)]
)
def test_int_with_suffix(text, value):
    assert int_with_suffix(text) == value


def _leaf_parsers(parser: argparse.ArgumentParser, prefix: str = ""):
    """(command path, parser) for every command that runs something."""
    sub = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not sub:
        yield prefix.strip(), parser
        return
    for name, child in sub[0].choices.items():
        yield from _leaf_parsers(child, f"{prefix} {name}")


def test_every_command_builds_and_its_defaults_are_the_configs():
    """Each option's default is the Config field's default (written once), and every option has help."""
    parser = build_parser()
    leaves = dict(_leaf_parsers(parser))
    assert {path.split()[0] for path in leaves} == set(COMMANDS)
    checked = 0
    for path, leaf in leaves.items():
        func = leaf.get_default("func")
        assert func is not None, path
        for action in leaf._actions:
            if action.dest == "help":
                continue
            assert action.help, f"`workbench {path}` option {action.option_strings or action.dest} has no help"
        config_type = getattr(func, "config_type", None)
        if config_type is None:
            continue
        defaults = {f.name: f.default for f in dataclasses.fields(config_type) if f.default is not dataclasses.MISSING}
        for action in leaf._actions:
            if action.dest in defaults and action.option_strings:
                assert action.default == defaults[action.dest], (path, action.dest)
                checked += 1
    assert checked > 50


def test_arch_choices_come_from_the_registry():
    from workbench.dictionaries.base import families

    train = dict(_leaf_parsers(build_parser(only="train")))["train"]
    arch = next(a for a in train._actions if a.dest == "arch")
    assert arch.choices == [*families(trainable=True), "transcoder"]
    assert "jumprelu" in families() and "jumprelu" not in arch.choices  # inference only
    assert {"topk", "batchtopk", "matryoshka", "mp"} <= set(arch.choices)


def test_a_closed_pipe_stops_the_command_quietly(tmp_path):
    """`workbench sql ... | head` is how people skim a result: the command stops without a traceback."""
    import subprocess

    from workbench.store import Store

    from conftest import start_cli

    Store.create_or_open(tmp_path / "s")
    query = "SELECT repeat('x', 100) FROM range(5000)"
    process = start_cli("sql", str(tmp_path / "s"), query, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.read(100)  # a reader that looks at the start (500 kB follow, far more than a pipe holds)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141 and "Traceback" not in stderr, stderr
