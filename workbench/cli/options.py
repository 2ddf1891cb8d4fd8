"""Command-line options built from an entry point's Config dataclass, so that each option is written once.

A Config field becomes an option: its name gives the flag (`batch_size` -> `--batch-size`), its type the
parser, its default the default, and the docstring written under it the help text (the layout of
sparsify's configs). A field without a default is required. Nested settings dataclasses are flattened
into the same command. `list[str]`/`list[int]` fields take comma-separated values, integers take 2M or
500k, and booleans are switches.

Written on argparse rather than taken from a dataclass-CLI library (tyro, simple-parsing): the CLI's
flags, exit codes and `--help` layout (descriptions with examples) are an interface that tests, the
README and users rely on, and this small layer keeps argparse's behaviour exactly while removing the
repetition.

Options every command shares (the store, the model and where it runs, the corpus) are shown in the
same groups with the same help everywhere: SHARED below.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field
from pathlib import Path
from typing import Any

# Help for options that many commands share, written once. A field of one of these names takes its help
# from here and is listed under the group's title in every command's --help.
SHARED: dict[str, tuple[str, str]] = {
    "store": ("store", "the store directory"),
    "model": ("model", "registry name (see `workbench models`), a local Hugging Face folder, or a hub id"),
    "backend": (
        "model",
        "hooking library: nnsight or transformerlens; both give the same numbers, nnsight is faster here",
    ),
    "device": ("model", "where it runs: auto (cuda when a GPU is visible, else cpu), cpu, cuda, cuda:N or mps"),
    "dtype": (
        "model",
        "compute precision of the model: auto (bfloat16 on cuda, float32 elsewhere), float32, bfloat16 or float16",
    ),
    "corpus": (
        "corpus",
        "'default' (CPython's pydoc topics, ~114k SmolLM2 tokens), a .txt/.md file or folder, "
        ".jsonl, .parquet, or hf:NAME[:CONFIG]",
    ),
    "text_column": ("corpus", "text field for .jsonl/.parquet/hf corpora"),
}
GROUP_TITLES = {"store": "store", "model": "model and where it runs", "corpus": "corpus"}

_SUFFIXES = {"k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


def int_with_suffix(text: str) -> int:
    """An integer, also written as 2M, 500k or 1.5B."""
    cleaned = text.strip().lower().replace("_", "")
    try:
        if cleaned and cleaned[-1] in _SUFFIXES:
            return int(float(cleaned[:-1]) * _SUFFIXES[cleaned[-1]])
        return int(cleaned)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a whole number like 2000000, 2M or 500k, got '{text}'") from exc


def _comma_list(item: Callable[[str], Any], what: str, strip: bool = True) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [item(part.strip() if strip else part) for part in text.split(",") if part.strip()]
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got '{text}'") from exc

    return parse


# For lists of strings whose spaces matter (steering targets such as " dragon"): items are kept as typed.
comma_list_keeping_spaces = _comma_list(str, "strings", strip=False)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (and of its dataclass bases), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (a frozen app): help falls back to the field name
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for statement, following in zip(body, body[1:]):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _default(field: Field) -> Any:
    if field.default is not MISSING:
        return field.default
    if field.default_factory is not MISSING:
        return field.default_factory()
    return MISSING


@dataclasses.dataclass(frozen=True)
class _Option:
    field: Field
    annotation: Any
    path: tuple[str, ...]  # attribute path: ("finetune", "model_lr") for a nested settings field


def _options(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[_Option]:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if not field.init or field.metadata.get("cli") is False:
            continue
        annotation, _ = _unwrap_optional(hints[field.name])
        if dataclasses.is_dataclass(annotation):
            yield from _options(annotation, prefix + (field.name,))  # type: ignore[arg-type]
        else:
            yield _Option(field, hints[field.name], prefix + (field.name,))


def _help(text: str, default: Any) -> str:
    text = text.replace("%", "%%")
    if default is MISSING or default is None or default is False or default == [] or "default:" in text:
        return text
    shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
    return f"{text} (default: {shown})"


def add_config_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    flags: dict[str, list[str]] | None = None,
    choices: dict[str, list[str]] | None = None,
    helps: dict[str, str] | None = None,
    parsers: dict[str, Callable[[str], Any]] | None = None,
    bare: dict[str, Any] | None = None,
) -> None:
    """Add one option per field of `cls` to `parser`.

    flags: other spellings for a field, e.g. {"dictionary": ["--dict"], "hook": ["--hook", "--in"]}; a name
           without dashes makes the field positional.
    choices: allowed values (taken from a registry by the caller).
    helps: help that replaces the field's docstring for this command only.
    parsers: a parser that replaces the one the field's type implies.
    bare: the value an option takes when given without one, e.g. {"ray": "local"}: `--ray` alone is `--ray local`.
    """
    flags, choices, helps, parsers, bare = flags or {}, choices or {}, helps or {}, parsers or {}, bare or {}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in _options(cls):
        name = option.field.name
        docs = field_docs(_owner(cls, option.path))
        group_key, shared_help = SHARED.get(name, (None, None))
        text = helps.get(name) or shared_help or docs.get(name)
        if text is None:
            raise TypeError(f"{cls.__name__}.{name} has no docstring: write its help text under the field.")
        if group_key is not None and group_key not in groups:
            groups[group_key] = parser.add_argument_group(GROUP_TITLES[group_key])
        target = groups[group_key] if group_key is not None else parser
        default = _default(option.field)
        annotation, optional = _unwrap_optional(option.annotation)
        spellings = flags.get(name, ["--" + name.replace("_", "-")])
        kwargs: dict[str, Any] = {"dest": "__".join(option.path), "help": _help(text, default)}
        if not spellings[0].startswith("-"):  # positional: argparse takes dest from the name
            kwargs.pop("dest")
            spellings = ["__".join(option.path)]
            kwargs["metavar"] = flags[name][0]
        if annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if default is True else "store_true"
            kwargs["default"] = bool(default) if default is not MISSING else False
        else:
            kwargs["type"] = parsers.get(name) or _parser_for(annotation, name)
            if default is MISSING and spellings[0].startswith("-"):
                kwargs["required"] = True
            elif default is not MISSING:
                kwargs["default"] = default
            if name in bare:
                kwargs["nargs"], kwargs["const"] = "?", bare[name]
            if name in choices:
                kwargs["choices"] = choices[name]
            elif typing.get_origin(annotation) is typing.Literal:
                kwargs["choices"] = list(typing.get_args(annotation))
        if optional and "required" in kwargs:
            kwargs.pop("required")
        target.add_argument(*spellings, **kwargs)


def _owner(cls: type, path: tuple[str, ...]) -> type:
    """The dataclass that declares the field at `path` (nested settings document their own fields)."""
    owner = cls
    for attribute in path[:-1]:
        owner = _unwrap_optional(typing.get_type_hints(owner)[attribute])[0]
    return owner


def _parser_for(annotation: Any, name: str) -> Callable[[str], Any]:
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return (
            _comma_list(int_with_suffix, "integers")
            if item is int
            else _comma_list(float if item is float else str, "numbers" if item is float else "names")
        )
    if origin is typing.Literal:
        return str
    if annotation is int:
        return int_with_suffix
    if annotation is float:
        return float
    if annotation is str:
        return str
    if annotation is Path:
        return Path
    raise TypeError(f"No command-line parser for field '{name}' of type {annotation!r}.")


def config_from_args(cls: type, args: argparse.Namespace, prefix: tuple[str, ...] = ()) -> Any:
    """Build `cls` (and its nested settings) from the parsed options that add_config_options added."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init or field.metadata.get("cli") is False:
            continue
        annotation, _ = _unwrap_optional(hints[field.name])
        path = prefix + (field.name,)
        if dataclasses.is_dataclass(annotation):
            values[field.name] = config_from_args(annotation, args, path)  # type: ignore[arg-type]
        else:
            values[field.name] = getattr(args, "__".join(path))
    return cls(**values)
