"""``prefrl sweep SWEEP_FILE --out DIR``: run (or resume) a grid of experiments."""

from __future__ import annotations

import argparse
import sys

from prefrl.config import parse_float, parse_int
from prefrl.tracking import add_track_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a sweep file's grid of cells × seeds into a resumable result directory",
        description=(
            "Validate SWEEP_FILE (TOML, see experiments/sweeps/), then run every cell × seed "
            "and store one JSON record per run in OUT/runs/. With --resume only missing or "
            "corrupt runs are run."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("sweep_file", help="sweep definition (TOML)")
    p.add_argument("--out", required=True, help="result directory")
    p.add_argument("--resume", action="store_true", help="run only runs without a valid record")
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run cells as Ray tasks on this cluster "
                        "('local' starts one, 'auto' finds a running one)")
    p.add_argument("--workers", type=parse_int, default=None,
                   help="local worker processes (default: CPU cores; 1 = in this process)")
    p.add_argument("--budget-scale", type=parse_float, default=1.0,
                   help="multiply every step budget (training steps, env steps) by this")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sweep-file value, e.g. --set tasks.run.dataset=data.npz "
                        "or --set 'grid.label_budget=[250]' (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and list the runs to do, then exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--compile-cache", metavar="DIR", default=None,
                   help="JAX persistent compilation cache shared by the workers (default: "
                        "$PREFRL_JAX_CACHE, else ~/.cache/prefrl/jax; never inside --out)")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not use a JAX persistent compilation cache")
    p.add_argument("--ray-timeout", type=parse_float, default=30.0, metavar="SECONDS",
                   help="give up on a --ray address that does not answer within this time")
    add_track_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prefrl.studies.cells import RUNNERS
    from prefrl.sweeps import execute
    from prefrl.sweeps import spec as spec_lib
    from prefrl.sweeps import store as store_lib

    spec = spec_lib.load_sweep(args.sweep_file, args.overrides)
    spec_lib.check_budget_scale(args.budget_scale)
    if args.dry_run:
        execute.check_before_writing(spec, args.out, args.workers, ray_address=args.ray,
                                     ray_timeout=args.ray_timeout)
        store = store_lib.ResultStore(args.out)
        units, summary = execute.plan(spec, store, RUNNERS, budget_scale=args.budget_scale,
                                      resume=args.resume)
        todo = sum(len(u.wanted) for u in units)
        print(f"{spec.name}: {len(spec.cells())} cells × {len(spec.seeds)} seeds = "
              f"{summary['total']} runs; {summary['done']} done, {todo} to run")
        for unit in units:
            print(f"  {unit.cell.label()}  seeds {list(unit.wanted)}")
        return 0

    from tqdm import tqdm

    bar = None

    def on_plan(todo: int, done: int) -> None:
        nonlocal bar
        print(f"{spec.name}: {done} runs already done, {todo} to run", file=sys.stderr)
        quiet = args.no_progress or not sys.stderr.isatty()  # no bar frames in log files
        bar = tqdm(total=todo, unit="run", desc=spec.name, disable=quiet, file=sys.stderr,
                   dynamic_ncols=True)

    def on_records(records: list[dict]) -> None:
        if bar is not None:
            bar.update(len(records))

    try:
        outcome = execute.run_sweep(
            spec, args.out, RUNNERS, resume=args.resume, budget_scale=args.budget_scale,
            workers=args.workers, ray_address=args.ray, on_records=on_records, on_plan=on_plan,
            compile_cache=False if args.no_compile_cache else (args.compile_cache or True),
            ray_timeout=args.ray_timeout,
        )
    finally:
        if bar is not None:
            bar.close()
    print(f"wrote {len(outcome.written)} records to {args.out}/runs "
          f"({outcome.skipped} were already done)")
    if outcome.failed:
        print(f"{len(outcome.failed)} cell(s) failed (rerun with --resume): "
              + ", ".join(outcome.failed), file=sys.stderr)
        return 1
    return 0
