"""``prefrl train bc``: behaviour cloning on every segment of a dataset (π_ref, "SFT").

    prefrl train bc --dataset data.npz --num-steps 5000 --out bc.npz

Labels are not used (``--label`` only picks the held-out queries on which
the implicit preference accuracy of Σ log π is reported).
"""


from __future__ import annotations

import argparse

from prefrl import config as config_lib
from prefrl.commands.offline_args import add_offline_parser, run_offline
from prefrl.learners import bc
from prefrl.studies import train_offline


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_offline_parser(sub, "bc", "behaviour cloning (the reference policy), offline",
                       __doc__, train_offline.PolicyRunConfig, bc.BCConfig, run)


def run(args: argparse.Namespace) -> int:
    return run_offline(args, "bc", train_offline.PolicyRunConfig,
                       config_lib.from_args(bc.BCConfig, args))
