"""``prefrl train bc``: behaviour cloning on every segment of a dataset (π_ref, "SFT").

    prefrl train bc --dataset data.npz --num-steps 5000 --out bc.npz

Labels are not used (``--label`` only picks the held-out queries on which
the implicit preference accuracy of Σ log π is reported).
"""

from __future__ import annotations

import argparse
import json

from prefrl import config as config_lib
from prefrl.learners import bc
from prefrl.loops import offline


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bc", help="behaviour cloning (the reference policy), offline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_lib.add_dataclass_args(p, offline.PolicyRunConfig)
    config_lib.add_dataclass_args(p, offline.TrainConfig)
    config_lib.add_dataclass_args(p, bc.BCConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    summary = offline.run("bc", config_lib.from_args(offline.PolicyRunConfig, args),
                          config_lib.from_args(offline.TrainConfig, args),
                          config_lib.from_args(bc.BCConfig, args))
    print(json.dumps(summary))
    return 0
