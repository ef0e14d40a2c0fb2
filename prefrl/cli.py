"""The ``prefrl`` command: one entry point, one module per subcommand.

Each module in ``prefrl.commands`` exposes ``add_parser(subparsers)`` (which
registers its options, typed by a frozen config dataclass) and sets
``func`` on the parser to the function that runs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand name -> module in prefrl.commands. Imported lazily so that
# `prefrl --help` stays fast and one broken command cannot break the others.
COMMANDS: dict[str, str] = {
    "demo": "demo",
    "collect": "collect",
    "label": "label",
    "fit": "fit",
    "train": "train",
    "eval": "evaluate",
    "sweep": "sweep",
    "report": "report",
    "bench": "bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefrl",
        description="Preference-based RL on MuJoCo half-cheetah (partial return vs regret).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        try:
            mod = importlib.import_module(f"prefrl.commands.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"prefrl.commands.{module}":
                raise
            continue
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        # Bad input: one clear line, no traceback.
        print(f"prefrl {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
