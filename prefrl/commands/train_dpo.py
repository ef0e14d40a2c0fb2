"""``prefrl train dpo``: contrastive DPO (CPL-KL) against a frozen BC reference policy.

    prefrl train dpo --dataset data.npz --reference bc.npz --beta 0.1 --out dpo.npz
    prefrl train dpo --dataset data.npz --bc-pretrain-steps 2000 --out dpo.npz  # fit π_ref here

Scores are ``β Σ_t γ^t log(π/π_ref)``; the policy starts at π_ref.
"""


from __future__ import annotations

import argparse

from prefrl import config as config_lib
from prefrl.commands.offline_args import add_offline_parser, run_offline
from prefrl.learners import cpl
from prefrl.studies import train_offline


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_offline_parser(sub, "dpo", "contrastive DPO against a BC reference policy, offline",
                       __doc__, train_offline.DPORunConfig, cpl.DPOConfig, run)


def run(args: argparse.Namespace) -> int:
    return run_offline(args, "dpo", train_offline.DPORunConfig,
                       config_lib.from_args(cpl.DPOConfig, args))
