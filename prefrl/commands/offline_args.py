"""The options and runner shared by ``prefrl train bc|cpl|dpo`` (one parser shape, three algos)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from prefrl import config as config_lib
from prefrl.loops import offline
from prefrl.studies import train_offline


def add_offline_parser(sub: argparse._SubParsersAction, name: str, help_text: str, doc: str,
                       run_config: type, learner_config: type,
                       func: Callable[[argparse.Namespace], int]) -> None:
    """``prefrl train NAME``: run options, :class:`offline.TrainConfig` and the learner's config."""
    p = sub.add_parser(name, help=help_text, description=doc,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    for cls in (run_config, offline.TrainConfig, learner_config):
        config_lib.add_dataclass_args(p, cls)
    p.set_defaults(func=func)


def run_offline(args: argparse.Namespace, algo: str, run_config: type, learner_config: Any
                ) -> int:
    """Train, evaluate and save (:func:`prefrl.studies.train_offline.run`); print the summary.

    The output file is locked (:func:`prefrl.locks.hold_file`): one writer at a time.
    """
    from prefrl import locks, preflight

    config = config_lib.from_args(run_config, args)
    train_config = config_lib.from_args(offline.TrainConfig, args)
    for path in train_offline.seed_paths(config.out, config.seeds):
        preflight.check_output_file(path, "--out")
    with locks.hold_file(config.out, option="--out"):
        summary = train_offline.run(algo, config, train_config, learner_config)
    print(json.dumps(summary))
    return 0
