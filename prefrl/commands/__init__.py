"""Subcommands of the ``prefrl`` CLI (see ``prefrl.cli``)."""

from __future__ import annotations

import argparse
import importlib


def add_subcommands(sub: argparse._SubParsersAction, modules: list[str]) -> None:
    """Register ``prefrl.commands.<module>.add_parser`` for each module that exists.

    Imported lazily, so ``--help`` stays fast; a module that is absent (an
    optional command) is skipped, while an import error inside a module is raised.
    """
    for module in modules:
        name = f"prefrl.commands.{module}"
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        mod.add_parser(sub)
