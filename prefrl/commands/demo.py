"""``prefrl demo``: the whole pipeline on ``target-speed`` from the shipped experts.

One query set labelled by both oracles (partial return and regret); a reward
model fitted under each assumption; PPO on each learned reward; BC and CPL
on the labels; then a table of true return (mean ± std over evaluation
episodes), speed error and held-out preference accuracy next to the expert,
BC and a random policy. Writes ``results.json`` and ``demo.png`` to
``--out-dir`` (default ``runs/demo``) and prints one JSON summary line last.

    prefrl demo                    # the default budgets (≤ 10 min on 2 CPU cores)
    prefrl demo --quick            # every budget shrunk: a smoke test (~1 min of CPU)
    prefrl demo --experts DIR      # PPO checkpoints of the task in DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from prefrl import config as config_lib


def add_parser(sub: argparse._SubParsersAction) -> None:
    from prefrl.studies.demo_config import DemoConfig

    p = sub.add_parser(
        "demo",
        help="end-to-end demo: preferences from both oracles → reward models → PPO / CPL → table",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick", action="store_true",
        help="shrink every budget (a smoke test, ~1 min of CPU); given options still apply",
    )
    config_lib.add_dataclass_args(p, DemoConfig)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`DemoConfig` of parsed options: defaults (or the quick preset) + given ones."""
    from prefrl.studies.demo_config import QUICK, DemoConfig

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig)
             if hasattr(args, f.name)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    base = dict(QUICK) if getattr(args, "quick", False) else {}
    return DemoConfig(**{**base, **given})


def run(args: argparse.Namespace) -> int:
    from prefrl.report import demo as demo_report
    from prefrl.studies import demo

    config = config_from_args(args)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    results = demo.run_demo(config, log=log)
    out_dir = Path(config.out_dir)
    plot = demo_report.save_plot(results, out_dir / "demo.png")
    results["plot"] = str(plot)
    path = demo_report.write_results(results, out_dir / "results.json")
    print(demo_report.format_table(results))
    print(f"plot: {plot}\nresults: {path}")
    summary = demo_report.summary_line(results, out_dir)
    print(json.dumps(summary, sort_keys=True))
    return 0
