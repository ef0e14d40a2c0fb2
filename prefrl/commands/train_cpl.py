"""``prefrl train cpl``: Contrastive Preference Learning (CPL, CPL-BC) from a dataset.

    prefrl train cpl --dataset data.npz --label regret --out cpl.npz --seeds 0 1 2
    prefrl train cpl --dataset data.npz --bc-weight 0.5 --out cpl_bc.npz        # CPL-BC

Trains offline (``prefrl.loops.offline``), evaluates the true return on the
dataset's task, saves one policy per seed and prints a JSON summary line.
"""

from __future__ import annotations

import argparse
import json

from prefrl import config as config_lib
from prefrl.learners import cpl
from prefrl.loops import offline


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cpl", help="Contrastive Preference Learning (CPL / CPL-BC), offline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_lib.add_dataclass_args(p, offline.PolicyRunConfig)
    config_lib.add_dataclass_args(p, offline.TrainConfig)
    config_lib.add_dataclass_args(p, cpl.CPLConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    learner_config = config_lib.from_args(cpl.CPLConfig, args)
    algo = "cpl_bc" if learner_config.bc_weight > 0 else "cpl"
    summary = offline.run(algo, config_lib.from_args(offline.PolicyRunConfig, args),
                          config_lib.from_args(offline.TrainConfig, args), learner_config)
    print(json.dumps(summary))
    return 0
