"""`workbench models`: the named models."""

from __future__ import annotations


def list_models(args) -> int:
    from workbench.models import REGISTRY

    for name, entry in REGISTRY.items():
        print(f"{name:14s} {entry.description}")
    print("\nAny local Hugging Face folder or hub id also works as --model.")
    return 0


def add_models(sub, name: str, help_text: str) -> None:
    sub.add_parser(name, help=help_text, description="List the named models that --model accepts.").set_defaults(
        func=list_models
    )


COMMANDS = {"models": add_models}
