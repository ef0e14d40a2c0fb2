"""``prefrl train ALGO``: train a policy (ppo, cpl, dpo, bc).

Each algorithm's options and runner live in ``prefrl.commands.train_<algo>``,
which exposes ``add_parser(sub)`` like a top-level command module.
"""

from __future__ import annotations

import argparse
import importlib

ALGOS = ("ppo", "online", "cpl", "dpo", "bc")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a policy: " + ", ".join(ALGOS))
    algo_sub = p.add_subparsers(dest="algo", metavar="ALGO")
    for algo in ALGOS:
        try:
            mod = importlib.import_module(f"prefrl.commands.train_{algo}")
        except ModuleNotFoundError as err:
            if err.name != f"prefrl.commands.train_{algo}":
                raise
            continue
        mod.add_parser(algo_sub)
