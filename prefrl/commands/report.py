"""``prefrl report RESULTS_DIR --out DIR``: tables, figures and a Markdown summary of a sweep."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="summarise a sweep's result directory: CSV tables, figures (PNG/PDF), summary.md",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("results_dir", help="a directory written by `prefrl sweep`")
    p.add_argument("--out", required=True, help="where to write the report")
    p.add_argument("--bootstrap-reps", type=int, default=2000,
                   help="bootstrap replicates for the 95%% intervals")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prefrl import report

    if args.bootstrap_reps < 100:
        raise ValueError(f"--bootstrap-reps must be >= 100, got {args.bootstrap_reps}")
    result = report.write_report(args.results_dir, args.out, reps=args.bootstrap_reps)
    print(f"report of {result['runs']} runs in {result['cells']} cells written to {args.out}: "
          + ", ".join(result["files"]))
    return 0
