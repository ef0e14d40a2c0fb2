"""``prefrl report RESULTS_DIR --out DIR``: tables, figures and a Markdown summary of a sweep."""

from __future__ import annotations

import argparse

from prefrl.config import parse_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="summarise a sweep's result directory: CSV tables, figures (PNG/PDF), summary.md",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("results_dir", help="a directory written by `prefrl sweep`")
    p.add_argument("--out", required=True, help="where to write the report")
    p.add_argument("--bootstrap-reps", type=parse_int, default=2000,
                   help="bootstrap replicates for the 95%% intervals")
    p.set_defaults(func=run)


MAX_REPS = 10**7  # far past the point where a 95 % interval still moves


def check_options(args: argparse.Namespace) -> None:
    """Refuse, before anything is written, a replicate count or output folder that cannot work.

    The bootstrap holds ``reps × runs`` indices and values for the largest cell
    at once, so its memory is checked against the machine's first.
    """
    from prefrl import preflight
    from prefrl.config import ConfigError
    from prefrl.sweeps.store import iter_cells, load_records

    reps = args.bootstrap_reps
    if not 100 <= reps <= MAX_REPS:
        raise ConfigError(f"--bootstrap-reps must be >= 100 and <= {MAX_REPS}, got {reps}")
    preflight.check_output_dir(args.out, "--out")
    records = load_records(args.results_dir)
    largest = max(len(group) for group in iter_cells(records).values())
    # Per metric: int64 indices and float64 draws of [reps, runs], plus the statistic.
    preflight.check_memory("--bootstrap-reps", reps, reps * (16 * largest + 64))


def run(args: argparse.Namespace) -> int:
    from prefrl import report

    check_options(args)
    result = report.write_report(args.results_dir, args.out, reps=args.bootstrap_reps)
    print(f"report of {result['runs']} runs in {result['cells']} cells written to {args.out}: "
          + ", ".join(result["files"]))
    return 0
