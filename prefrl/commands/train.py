"""``prefrl train ALGO``: train a policy (ppo, sac, cpl, dpo, bc).

Each algorithm's options and runner live in ``prefrl.commands.train_<algo>``,
which exposes ``add_parser(sub)`` like a top-level command module.
"""

from __future__ import annotations

import argparse

from prefrl.commands import add_subcommands
from prefrl.tracking import add_track_args

ALGOS = ("ppo", "online", "cpl", "dpo", "bc", "sac")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a policy: " + ", ".join(ALGOS))
    algo_sub = p.add_subparsers(dest="algo", metavar="ALGO")
    add_subcommands(algo_sub, [f"train_{algo}" for algo in ALGOS])
    for algo_parser in algo_sub.choices.values():
        add_track_args(algo_parser)
