"""``prefrl train dpo``: contrastive DPO (CPL-KL) against a frozen BC reference policy.

    prefrl train dpo --dataset data.npz --reference bc.npz --beta 0.1 --out dpo.npz
    prefrl train dpo --dataset data.npz --bc-pretrain-steps 2000 --out dpo.npz  # fit π_ref here

Scores are ``β Σ_t γ^t log(π/π_ref)``; the policy starts at π_ref.
"""

from __future__ import annotations

import argparse
import json

from prefrl import config as config_lib
from prefrl.learners import cpl
from prefrl.loops import offline


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dpo", help="contrastive DPO against a BC reference policy, offline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config_lib.add_dataclass_args(p, offline.DPORunConfig)
    config_lib.add_dataclass_args(p, offline.TrainConfig)
    config_lib.add_dataclass_args(p, cpl.DPOConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    summary = offline.run("dpo", config_lib.from_args(offline.DPORunConfig, args),
                          config_lib.from_args(offline.TrainConfig, args),
                          config_lib.from_args(cpl.DPOConfig, args))
    print(json.dumps(summary))
    return 0
