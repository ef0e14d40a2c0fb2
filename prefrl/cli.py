"""The ``prefrl`` command: one entry point, one module per subcommand.

Each module in ``prefrl.commands`` exposes ``add_parser(subparsers)`` (which
registers its options, typed by a frozen config dataclass) and sets
``func`` on the parser to the function that runs it.

Exit status (:func:`exit_status`, the one rule of every command): 0 success;
2 an option that cannot work (a bad value or combination, as argparse's own
errors, an output path that cannot be written, an output folder another
process is writing); 1 an input that cannot be used (a missing, unreadable,
corrupt, forged or mismatched file, a run that diverged) and an operating
system error while running (a full disk), whose message names the path.
Either way stderr gets one line naming the problem, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from prefrl.commands import add_subcommands
from prefrl.jax_setup import configure_jax

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
    "render": "render",
    "annotate": "annotate",
    "convert": "convert",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefrl",
        description="Preference-based RL on MuJoCo half-cheetah (partial return vs regret).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_subcommands(sub, list(COMMANDS.values()))
    return parser


def exit_status(err: BaseException) -> int:
    """2 for an option that cannot work, 1 for an input that cannot be used or an OS error."""
    from prefrl.config import ConfigError
    from prefrl.io import FileFormatError

    if isinstance(err, ConfigError):
        return 2
    data_errors: tuple[type[BaseException], ...] = (OSError, FileFormatError)
    checkpoints = sys.modules.get("prefrl.checkpoints")
    fit = sys.modules.get("prefrl.loops.fit")
    for module in (checkpoints, fit):
        if module is not None:  # a divergence: the run's numbers, not its options
            data_errors += (module.NonFiniteError,)
    return 1 if isinstance(err, data_errors) else 2


def error_message(err: BaseException) -> str:
    """The one line printed for ``err``: an OS error names its path, a KeyError loses its quotes."""
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    if isinstance(err, OSError) and err.strerror:
        if err.filename is not None:
            return f"{err.filename}: {err.strerror}"
        return str(err.strerror)
    return str(err)


def uses_mjx(args: argparse.Namespace) -> bool:
    """Whether the command runs MJX: ``--backend mjx``, also among a benchmark's own options."""
    if getattr(args, "backend", None) == "mjx":
        return True
    rest = list(getattr(args, "rest", None) or [])
    return "--backend=mjx" in rest or any(
        a == "--backend" and b == "mjx" for a, b in zip(rest, rest[1:], strict=False))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    configure_jax(mjx=uses_mjx(args))
    try:
        if getattr(args, "track", None):  # --track: mirror the run's JSON files (prefrl.tracking)
            from prefrl.tracking import run_tracked

            result = run_tracked(args, args.func)
        else:
            result = args.func(args)
    except ImportError as err:
        backend = sys.modules.get("prefrl.rollout.mjx_backend")
        if backend is None or not isinstance(err, backend.MissingExtraError):
            raise
        # An optional package an option needs is missing: the line names the extra.
        print(f"prefrl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, OSError, KeyError) as err:
        # Bad input: one clear line, no traceback.
        print(f"prefrl {args.command}: error: {error_message(err)}", file=sys.stderr)
        return exit_status(err)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
