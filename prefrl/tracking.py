"""Experiment tracking: ``--track tensorboard|wandb`` on ``train``, ``bench`` and ``sweep``.

The JSON-lines files a run writes stay the source of truth; a tracker only
*mirrors* them. While the command runs, a background thread reads what is new
in the files under the run's folder every few seconds (and once more at the
end) and logs it:

* each line of a ``*.jsonl`` file (``metrics.jsonl``, ``rounds.jsonl``,
  ``evals.jsonl`` …) → scalars ``<file stem>/<key>`` (nested keys joined
  by ``/``) at the record's ``env_steps`` (else ``update``, ``step``,
  ``round``, else the line number); a record with ``labels_used`` is also
  logged as ``<stem>_by_labels/<key>`` against the labels used, so online
  runs have curves against env steps *and* against labels;
* a sweep's run record (``runs/<id>.json``) → its own TensorBoard run
  ``records/<id>`` with the cell as hyper-parameters and its metrics (the
  HParams dashboard compares cells), and ``sweep_records/<metric>`` scalars;
* any other ``*.json`` written during the run (a benchmark's results,
  ``result.json``) → ``<file stem>/<key>`` scalars at step 0;
* the command's last JSON line on stdout → ``summary/<key>``.

The full configuration (every parsed option, plus a sweep file's contents)
goes in as hyper-parameters (TensorBoard's HParams plugin and a ``config``
text; W&B's run config). TensorBoard files are written by ``tensorboardX``;
W&B runs in offline mode (``wandb sync`` uploads later), so no network is
needed. Install both with ``pip install -e ".[track]"``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

KINDS = ("tensorboard", "wandb")
STEP_KEYS = ("env_steps", "update", "step", "round")
SWEEP_RECORD = "prefrl.sweep.record"


def add_track_args(parser: argparse.ArgumentParser) -> None:
    """``--track`` and ``--track-dir`` on a command's parser."""
    parser.add_argument("--track", action="append", choices=KINDS, default=[], metavar="KIND",
                        help="also log to tensorboard or wandb (offline; repeat for both); the "
                             "JSON lines stay the source of truth (pip install -e \".[track]\")")
    parser.add_argument("--track-dir", default=None,
                        help="folder of the tracking files (default: OUT/track, or "
                             "runs/track/COMMAND-TIME for a command without an output folder)")


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite numeric leaves of a nested record, keys joined by ``/`` (lists are left out)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        elif isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, int | float) and math.isfinite(value):
            out[name] = float(value)
    return out


def hparam_values(config: Mapping[str, Any]) -> dict[str, bool | str | float | int]:
    """A nested config as TensorBoard hyper-parameters (scalars kept, the rest as JSON text)."""
    out: dict[str, bool | str | float | int] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update({f"{key}/{k}": v for k, v in hparam_values(value).items()})
        elif isinstance(value, bool | str | int | float):
            out[str(key)] = value
        elif value is not None:
            out[str(key)] = json.dumps(value, default=str)
    return out


def step_of(record: Mapping[str, Any], index: int) -> int:
    for key in STEP_KEYS:
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return int(value)
    return index


class Tracker:
    """Mirrors the JSON files under ``watch`` into TensorBoard and/or W&B (see the module doc)."""

    def __init__(self, kinds: list[str], log_dir: str | Path, config: Mapping[str, Any], *,
                 name: str, watch: list[Path], started: float | None = None) -> None:
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown tracker(s) {unknown}; choose from {list(KINDS)}")
        self.log_dir = Path(log_dir)
        self.watch = [Path(w) for w in watch]
        self.started = time.time() if started is None else started
        self.config = dict(config)
        self._offsets: dict[Path, int] = {}
        self._lines: dict[Path, int] = {}
        self._mtimes: dict[Path, float] = {}
        self._records = 0
        self._lock = threading.Lock()
        self.tb = self.wandb = None
        if "tensorboard" in kinds:
            self.tb = _tensorboard_writer(self.log_dir)
            _write_hparams(self.tb, hparam_values(self.config))
            self.tb.add_text("config", "```\n" + json.dumps(self.config, indent=2, default=str)
                             + "\n```", 0)
        if "wandb" in kinds:
            self.wandb = _wandb_run(self.log_dir, self.config, name)

    # ------------------------------------------------------------------ logging

    def log(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(f"{prefix}/{key}", value, step)
        if self.wandb is not None and values:
            axis = f"{prefix}/_step"
            self.wandb.define_metric(axis)
            self.wandb.define_metric(f"{prefix}/*", step_metric=axis)
            self.wandb.log({axis: step, **{f"{prefix}/{k}": v for k, v in values.items()}})

    def _log_jsonl(self, path: Path) -> None:
        offset = self._offsets.get(path, 0)
        size = path.stat().st_size
        if size < offset:  # rewritten shorter (a resumed run cut it back): read it again
            offset, self._lines[path] = 0, 0
        if size == offset:
            return
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a half-written last line waits
        self._offsets[path] = offset + len(complete)
        for raw in complete.splitlines():
            index = self._lines.get(path, 0)
            self._lines[path] = index + 1
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if not isinstance(record, dict):
                continue
            values = flatten(record)
            self.log(path.stem, values, step_of(record, index))
            labels = record.get("labels_used")
            if isinstance(labels, int | float) and not isinstance(labels, bool):
                self.log(f"{path.stem}_by_labels", values, int(labels))

    def _log_json(self, path: Path) -> None:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return  # being replaced, or not JSON: the next pass reads it
        if not isinstance(record, dict):
            return
        if record.get("kind") == SWEEP_RECORD:
            self._log_sweep_record(record)
        else:
            self.log(path.stem, flatten(record), 0)
            if self.wandb is not None:
                self.wandb.summary.update({f"{path.stem}/{k}": v
                                           for k, v in flatten(record).items()})

    def _log_sweep_record(self, record: Mapping[str, Any]) -> None:
        metrics = flatten(record.get("metrics") or {})
        params = hparam_values({"cell": record.get("cell") or {}, "seed": record.get("seed")})
        if self.tb is not None:
            sub = _tensorboard_writer(self.log_dir / "records" / str(record.get("run_id")))
            _write_hparams(sub, params, metrics)
            for key, value in metrics.items():
                sub.add_scalar(key, value, 0)
            sub.close()
        self.log("sweep_records", metrics, self._records)
        self._records += 1

    def sync(self) -> None:
        """Log what is new in the watched files since the last call."""
        with self._lock:
            for root in self.watch:
                files = [root] if root.is_file() else sorted(root.rglob("*.json*")) \
                    if root.is_dir() else []
                for path in files:
                    if self.log_dir in path.parents:
                        continue
                    try:
                        mtime = path.stat().st_mtime
                    except OSError:
                        continue
                    if mtime < self.started:
                        continue  # written before this run: not this run's
                    if path.suffix == ".jsonl":
                        self._log_jsonl(path)
                    elif path.suffix == ".json" and self._mtimes.get(path) != mtime:
                        self._mtimes[path] = mtime
                        self._log_json(path)

    def close(self, summary: Mapping[str, Any] | None = None) -> None:
        self.sync()
        with self._lock:
            if summary:
                self.log("summary", flatten(summary), 0)
                if self.wandb is not None:
                    self.wandb.summary.update(flatten(summary))
            if self.tb is not None:
                self.tb.close()
            if self.wandb is not None:
                self.wandb.finish()


def _tensorboard_writer(folder: Path) -> Any:
    try:
        from tensorboardX import SummaryWriter
    except ImportError as err:
        raise ImportError("--track tensorboard needs tensorboardX: pip install -e \".[track]\"") \
            from err
    return SummaryWriter(logdir=str(folder), flush_secs=5)


def _write_hparams(writer: Any, params: Mapping[str, Any],
                   metrics: Mapping[str, float] | None = None) -> None:
    from tensorboardX.summary import hparams

    for summary in hparams(dict(params), dict(metrics or {})):
        writer.file_writer.add_summary(summary)


def _wandb_run(folder: Path, config: Mapping[str, Any], name: str) -> Any:
    try:
        import wandb
    except ImportError as err:
        raise ImportError("--track wandb needs wandb: pip install -e \".[track]\"") from err
    folder.mkdir(parents=True, exist_ok=True)
    return wandb.init(project="prefrl", name=name, dir=str(folder), mode="offline",
                      config=dict(config), settings=wandb.Settings(quiet=True))


# --------------------------------------------------------------------------- the CLI hook


class _LastJsonLine(io.TextIOBase):
    """Passes stdout through and keeps the last line that is a JSON object."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.last, self._buffer = stream, None, ""

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    value = json.loads(line)
                    self.last = value if isinstance(value, dict) else self.last
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def command_config(args: argparse.Namespace) -> dict[str, Any]:
    """Every parsed option (JSON-able), plus a sweep file's contents."""
    config = {k: v for k, v in vars(args).items() if k != "func" and not callable(v)}
    sweep_file = config.get("sweep_file")
    if sweep_file:
        import tomllib

        with contextlib.suppress(OSError, tomllib.TOMLDecodeError):
            config["sweep"] = tomllib.loads(Path(sweep_file).read_text(encoding="utf-8"))
    return json.loads(json.dumps(config, default=str))


def command_paths(args: argparse.Namespace) -> tuple[Path, list[Path], str]:
    """``(tracking folder, folders to watch, run name)`` of a parsed command."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = "-".join(str(x) for x in (args.command, getattr(args, "algo", None),
                                      getattr(args, "name", None)) if x)
    out = getattr(args, "out_dir", None) or (getattr(args, "out", None)
                                             if args.command == "sweep" else None)
    if args.command == "bench":
        watch = [Path("experiments/bench/results")]
        default = Path("experiments/bench/results/track") / f"{name}-{stamp}"
    elif out:
        watch, default = [Path(out)], Path(out) / "track"
    else:
        watch, default = [], Path("runs/track") / f"{name}-{stamp}"
    return Path(args.track_dir) if args.track_dir else default, watch, name


def run_tracked(args: argparse.Namespace, func: Callable[[argparse.Namespace], Any],
                interval: float = 5.0) -> Any:
    """Run ``func(args)`` while a :class:`Tracker` mirrors its files; close it either way."""
    log_dir, watch, name = command_paths(args)
    tracker = Tracker(list(args.track), log_dir, command_config(args), name=name, watch=watch)
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(interval):
            tracker.sync()

    thread = threading.Thread(target=poll, name="prefrl-track", daemon=True)
    thread.start()
    tee = _LastJsonLine(sys.stdout)
    try:
        with _redirect(tee):
            return func(args)
    finally:
        stop.set()
        thread.join()
        tracker.close(tee.last)
        print(f"prefrl {args.command}: tracking files in {log_dir}", file=sys.stderr)


@contextlib.contextmanager
def _redirect(stream: Any) -> Iterator[None]:
    old, sys.stdout = sys.stdout, stream
    try:
        yield
    finally:
        sys.stdout = old
