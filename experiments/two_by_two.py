"""The 2×2 study: labelling model {partial return, regret} × learning assumption.

    python experiments/two_by_two.py                        # synthetic task, 5 seeds
    python experiments/two_by_two.py --seeds 10 --num-steps 1000
    python experiments/two_by_two.py --task half_cheetah \\
        --dataset experiments/data/target-speed.npz \\
        --expert experiments/experts/target-speed/final.npz \\
        --discount 0.99 --seeds 3 --num-train 2000 --num-test 2000 \\
        --out experiments/results/two_by_two_target_speed.json \\
        --markdown experiments/results/two_by_two_target_speed.md

Prints a table of held-out accuracy (against both oracles), Pearson /
Spearman correlation with r and with A_E, and EPIC distance to r, each as
IQM [95 % bootstrap CI] across seeds; ``--out FILE`` also saves the full
per-seed results as JSON and ``--markdown FILE`` the table with the command
line. The half-cheetah dataset is built by ``experiments/make_dataset.py``
(see its docstring). All logic lives in ``prefrl.studies.two_by_two``.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from prefrl import config
from prefrl.commands.fit import run_study
from prefrl.io import atomic_write_json, atomic_write_text
from prefrl.report import two_by_two as study_report
from prefrl.studies import two_by_two as study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_dataclass_args(parser, study.StudyConfig)
    parser.add_argument("--out", default="", help="optional JSON file for the full results")
    parser.add_argument("--markdown", default="",
                        help="optional Markdown file for the table (with this command line)")
    args = parser.parse_args(argv)
    result = run_study(config.from_args(study.StudyConfig, args))
    if args.out:
        atomic_write_json(args.out, result)
    if args.markdown:
        command = "python experiments/two_by_two.py " + " ".join(
            shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
        atomic_write_text(args.markdown, study_report.format_markdown(result, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
