"""``prefrl train cpl``: Contrastive Preference Learning (CPL, CPL-BC) from a dataset.

    prefrl train cpl --dataset data.npz --label regret --out cpl.npz --seeds 0 1 2
    prefrl train cpl --dataset data.npz --bc-weight 0.5 --out cpl_bc.npz        # CPL-BC

Trains offline (``prefrl.loops.offline``), evaluates the true return on the
dataset's task, saves one policy per seed and prints a JSON summary line.
"""


from __future__ import annotations

import argparse

from prefrl import config as config_lib
from prefrl.commands.offline_args import add_offline_parser, run_offline
from prefrl.learners import cpl
from prefrl.studies import train_offline


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_offline_parser(sub, "cpl", "Contrastive Preference Learning (CPL / CPL-BC), offline",
                       __doc__, train_offline.PolicyRunConfig, cpl.CPLConfig, run)


def run(args: argparse.Namespace) -> int:
    learner_config = config_lib.from_args(cpl.CPLConfig, args)
    algo = "cpl_bc" if learner_config.bc_weight > 0 else "cpl"
    return run_offline(args, algo, train_offline.PolicyRunConfig, learner_config)
