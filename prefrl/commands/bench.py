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


def run(args: argparse.Namespace) -> int:
    mod = importlib.import_module(f"prefrl.bench.{args.name}")
    return int(mod.main(args.rest) or 0)
