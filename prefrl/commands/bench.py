"""``prefrl bench NAME``: run a benchmark module from ``prefrl.bench``."""

from __future__ import annotations

import argparse
import importlib
import pkgutil

import prefrl.bench
from prefrl.tracking import add_track_args


def _available() -> list[str]:
    modules = pkgutil.iter_modules(prefrl.bench.__path__)
    return sorted(m.name for m in modules if not m.name.startswith("_"))


def add_parser(sub: argparse._SubParsersAction) -> None:
    names = _available()
    p = sub.add_parser(
        "bench",
        help="run a benchmark (results go to experiments/bench/results/ and a final JSON line)",
        description="Benchmarks: " + ", ".join(names),
    )
    add_track_args(p)  # before NAME: what follows NAME goes to the benchmark
    p.add_argument("name", choices=names, help="which benchmark")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the benchmark")
    p.set_defaults(func=run)


# Benchmarks whose --out is a folder (the others write one file).
FOLDER_OUTPUTS = ("online", "online_sac")
RESULTS = "experiments/bench/results"


def _out(rest: list[str]) -> str | None:
    """The value of ``--out`` among a benchmark's own options (the last one given)."""
    value = None
    for i, arg in enumerate(rest):
        if arg == "--out" and i + 1 < len(rest):
            value = rest[i + 1]
        elif arg.startswith("--out="):
            value = arg.partition("=")[2]
    return value


def run(args: argparse.Namespace) -> int:
    """Run the benchmark holding its output's lock: one writer per result file or folder."""
    from pathlib import Path

    from prefrl import locks, preflight

    out = _out(list(args.rest or []))
    folder = args.name in FOLDER_OUTPUTS
    if out is not None:
        check = preflight.check_output_dir if folder else preflight.check_output_file
        check(out, "--out")
    target = Path(out) if out else Path(RESULTS) / args.name
    lock = (locks.hold(target, option="--out", what="benchmark folder") if folder
            else locks.hold_file(target, option="--out", what="benchmark result"))
    mod = importlib.import_module(f"prefrl.bench.{args.name}")
    with lock:
        return int(mod.main(args.rest) or 0)
