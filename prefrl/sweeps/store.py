"""The result store of a sweep: run ids, checksummed records, one JSON file per run (no JAX).

Every run (one cell, one seed) has a run id derived deterministically from the
cell's configuration (data files by content), the seed and the budget scale,
and leaves one record ``DIR/runs/<run id>.json``, written atomically by the
driver process and carrying a checksum of its own content.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prefrl.io import atomic_write_json, jsonable, remove_stale_temp_files
from prefrl.sweeps.spec import CellConfig, SweepError, SweepInputError

RECORD_KIND = "prefrl.sweep.record"
RECORD_SCHEMA_VERSION = 1

def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


_DIGESTS: dict[tuple[str, float, int], str] = {}


def file_digest(path: str | None) -> str | None:
    """sha256 of a file's bytes (cached by path, mtime and size)."""
    if path is None:
        return None
    st = os.stat(path)
    key = (path, st.st_mtime, st.st_size)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def identity(cell: CellConfig, seed: int, budget_scale: float) -> dict[str, Any]:
    """What a run's result depends on: the cell (data by content, not by path), seed, scale."""
    ident = cell.to_dict()
    # Identify data by content so a moved checkout keeps its results and a
    # regenerated dataset does not silently reuse stale ones.
    ident["dataset"] = file_digest(cell.files.dataset)
    ident["expert"] = file_digest(cell.files.expert)
    ident["seed"] = int(seed)
    ident["budget_scale"] = float(budget_scale)
    return ident


def run_id(cell: CellConfig, seed: int, budget_scale: float = 1.0) -> str:
    """Deterministic, filename-safe id: readable prefix + 12 hex digits of the identity hash."""
    digest = hashlib.sha256(_canonical(identity(cell, seed, budget_scale)).encode()).hexdigest()
    prefix = f"{cell.learner}_{cell.label_model}_{cell.task}_n{cell.label_budget}"
    prefix = prefix.replace("+", "-")
    return f"{prefix}_k{cell.segment_length}_s{seed}_{digest[:12]}"


def _checksum(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(_canonical(body).encode()).hexdigest()


_VERSIONS: dict[str, str] | None = None


def versions() -> dict[str, str]:
    """Versions of python, prefrl, jax, numpy and the git commit of the source (if any)."""
    global _VERSIONS
    if _VERSIONS is None:
        from importlib.metadata import version

        import prefrl

        out = {
            "python": platform.python_version(),
            "prefrl": prefrl.__version__,
            "jax": version("jax"),
            "numpy": version("numpy"),
        }
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                capture_output=True, text=True, timeout=5, check=False,
            ).stdout.strip()
            if commit:
                out["git"] = commit
        except (OSError, subprocess.SubprocessError):
            pass
        _VERSIONS = out
    return dict(_VERSIONS)


def make_record(
    cell: CellConfig,
    seed: int,
    budget_scale: float,
    metrics: Mapping[str, Any],
    *,
    wall_time_s: float,
    group_size: int,
    sweep_name: str = "",
) -> dict[str, Any]:
    """A complete, checksummed record of one run."""
    record = {
        "kind": RECORD_KIND,
        "schema_version": RECORD_SCHEMA_VERSION,
        "run_id": run_id(cell, seed, budget_scale),
        "sweep": sweep_name,
        "cell": cell.to_dict(),
        "identity": identity(cell, seed, budget_scale),
        "assumption": cell.assumption,
        "seed": int(seed),
        "budget_scale": float(budget_scale),
        "metrics": jsonable(dict(metrics), keep_non_finite=True, strict=True),
        # The seeds of a cell train in one vmapped call; its wall time is shared.
        "wall_time_s": float(wall_time_s),
        "group_size": int(group_size),
        "versions": versions(),
        "host": platform.node(),
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    record["checksum"] = _checksum(record)
    return record


# The types of a record's fields (a report reads them without further checks).
_RECORD_TYPES: tuple[tuple[str, tuple[type, ...], str], ...] = (
    ("run_id", (str,), "a string"), ("sweep", (str,), "a string"),
    ("cell", (dict,), "an object"), ("identity", (dict,), "an object"),
    ("assumption", (str,), "a string"), ("seed", (int,), "an integer"),
    ("budget_scale", (int, float), "a number"), ("metrics", (dict,), "an object"),
    ("wall_time_s", (int, float), "a number"), ("group_size", (int,), "an integer"),
    ("checksum", (str,), "a string"),
)


def validate_record(record: Any, expected_id: str | None = None) -> str | None:
    """``None`` if ``record`` is a complete, untampered record; else what is wrong."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("kind") != RECORD_KIND:
        return f"kind is {record.get('kind')!r}, not {RECORD_KIND!r}"
    if record.get("schema_version") != RECORD_SCHEMA_VERSION:
        return f"unknown schema_version {record.get('schema_version')!r}"
    for key in ("run_id", "cell", "identity", "seed", "metrics", "checksum"):
        if key not in record:
            return f"missing field {key!r}"
    for key, types, what in _RECORD_TYPES:
        if key in record and (not isinstance(record[key], types)
                              or isinstance(record[key], bool) and bool not in types):
            return f"field {key!r} must be {what}, got {type(record[key]).__name__}"
    if record["checksum"] != _checksum(record):
        return "checksum mismatch (edited or damaged)"
    if expected_id is not None and record["run_id"] != expected_id:
        return f"run_id {record['run_id']!r} does not match the file name {expected_id!r}"
    return None


class ResultStore:
    """A directory of run records: ``root/runs/<run id>.json`` (one per run, atomic writes)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def path(self, rid: str) -> Path:
        return self.runs_dir / f"{rid}.json"

    def read(self, rid: str) -> tuple[dict[str, Any] | None, str | None]:
        """``(record, None)``, ``(None, None)`` if absent, ``(None, problem)`` if corrupt."""
        path = self.path(rid)
        if not path.exists():
            return None, None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return None, f"unreadable JSON ({err})"
        problem = validate_record(record, rid)
        return (None, problem) if problem else (record, None)

    def write(self, record: Mapping[str, Any]) -> Path:
        problem = validate_record(dict(record))
        if problem:
            raise ValueError(f"refusing to store an invalid record: {problem}")
        return atomic_write_json(self.path(record["run_id"]), dict(record))

    @contextlib.contextmanager
    def writer_lock(self) -> Iterator[None]:
        """Hold ``root/runs/.lock`` while writing: one sweep process per result directory.

        An OS lock (:func:`prefrl.locks.hold`): the kernel drops it when its
        process dies, so a lock file a killed sweep left is taken over. On
        taking the lock, temporary files that a killed writer left between
        ``mkstemp`` and ``os.replace`` are removed
        (:func:`prefrl.io.remove_stale_temp_files`: only those of dead processes).
        """
        from prefrl import locks

        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(locks.hold(self.runs_dir, option="--out",
                                               what="result directory"))
            except locks.FolderLocked as err:
                raise SweepError(f"{self.root} is being written by another sweep: {err}"
                                 ) from None
            remove_stale_temp_files(self.runs_dir)
            yield

    def records(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """All valid records (sorted by run id) and ``{file: problem}`` for corrupt ones."""
        good, bad = [], {}
        if not self.runs_dir.is_dir():
            return good, bad
        for path in sorted(self.runs_dir.glob("*.json")):
            record, problem = self.read(path.stem)
            if problem:
                bad[str(path)] = problem
            elif record is not None:
                good.append(record)
        return good, bad


def load_records(results_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Valid records of a result directory; raises :class:`SweepError` if there is none."""
    store = ResultStore(results_dir)
    if not store.runs_dir.is_dir():
        raise SweepInputError(f"{results_dir}: not a result directory (no runs/ folder)")
    good, bad = store.records()
    for path, problem in bad.items():
        print(f"warning: skipping corrupt record {path}: {problem}", file=sys.stderr)
    if not good:
        raise SweepInputError(f"{results_dir}: no valid run records"
                              + (f" ({len(bad)} refused, e.g. {next(iter(bad.values()))})"
                                 if bad else ""))
    return good


def iter_cells(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Group records by cell (identity without the seed)."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        key = _canonical({k: v for k, v in r["identity"].items() if k != "seed"})
        out.setdefault(key, []).append(r)
    return out


