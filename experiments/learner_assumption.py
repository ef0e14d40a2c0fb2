"""Label model × learner assumption on half-cheetah: the 2 × 4 table of issue #13.

    python experiments/learner_assumption.py --quick          # every stage, tiny, ~3 min
    python experiments/learner_assumption.py                  # the full table (~1 h+ of CPU)
    python experiments/learner_assumption.py --library-final false \\
        --out-dir experiments/results/learner_assumption_no_final   # Π without the final expert

Rows: partial-return or regret labels; columns: partial-return r̂ + PPO,
regret r̂ via successor features/GPI + PPO, Â + PPO, Â greedy (AWR). Writes
one JSON file per (task, label, learner, seed) under OUT/cells/ (a rerun skips
the cells that exist, so an interrupted run resumes), then
OUT/learner_assumption.{json,md}; ends with one JSON line. Every budget is an
option (``--help``). All logic lives in ``prefrl.studies.learner_assumption*`` (the
study) and ``prefrl.report.learner_assumption`` (its tables).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

from prefrl import config as config_lib
from prefrl.report import learner_assumption as report
from prefrl.studies import learner_assumption as study
from prefrl.studies import learner_assumption_config as settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config_lib.add_dataclass_args(parser, settings.LearnerAssumptionConfig)
    parser.add_argument("--quick", action="store_true",
                        help="tiny budgets for every stage (QUICK), output under "
                             "runs/learner_assumption_quick unless --out-dir is given")
    args = parser.parse_args(argv)
    overrides = settings.QUICK if args.quick else {}
    given = {k for k in vars(args) if k != "quick"}
    config = config_lib.from_args(settings.LearnerAssumptionConfig, args,
                                  **{k: v for k, v in overrides.items() if k not in given})
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    result = study.run(config, log=log)
    command = "python experiments/learner_assumption.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    paths = report.write_report(result, config.out_dir, command)
    print(report.format_markdown(result), file=sys.stderr)
    log(f"wrote {', '.join(str(p) for p in paths)} in {time.perf_counter() - t0:.1f} s")
    print(json.dumps(report.summary_line(result, config.out_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
