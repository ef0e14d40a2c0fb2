"""The 2×2 study: labelling model {partial return, regret} × learning assumption.

    python experiments/two_by_two.py                        # synthetic task, 5 seeds
    python experiments/two_by_two.py --seeds 10 --num-steps 1000
    python experiments/two_by_two.py --task half_cheetah \\
        --dataset data/target_speed_labels.npz \\
        --expert experiments/experts/target-speed/final.npz \\
        --discount 0.99 --hidden 256 256

Prints a table of held-out accuracy (against both oracles), Pearson /
Spearman correlation with r and with A_E, and EPIC distance to r, each as
IQM [95 % bootstrap CI] across seeds; ``--out FILE`` also saves the full
per-seed results as JSON. All logic lives in ``prefrl.study``.
"""

from __future__ import annotations

import argparse

from prefrl import config, study
from prefrl.io import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_dataclass_args(parser, study.StudyConfig)
    parser.add_argument("--out", default="", help="optional JSON file for the full results")
    args = parser.parse_args(argv)
    result = study.main(config.from_args(study.StudyConfig, args))
    if args.out:
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
