"""Running a sweep: plan the missing runs, execute them locally or on Ray, store the records.

No JAX here: the runners (:data:`prefrl.studies.cells.RUNNERS`, one per
learner) are handed in by the caller, so this module schedules work without
knowing what it computes. The seeds of one cell go to its runner together
(one vmapped call where the learner allows). Cells run in a process pool
(``spawn`` start method: forking a process that has initialised JAX's thread
pools can deadlock) or as Ray tasks (``ray_address``); the driver alone
writes records, so both paths produce the same store. Workers share a
persistent XLA compilation cache in the user's cache folder
(:func:`default_compile_cache`: ``~/.cache/prefrl/jax``, or ``$PREFRL_JAX_CACHE``),
never in the result directory: compiled code is native code, and a result
directory may come from someone else.

A cell that fails leaves ``DIR/failed/<cell>.json`` (its one-line reason and
the path of its log, ``DIR/cells/<cell>/error.log``, which holds the
traceback); the terminal gets the one line, and ``DIR/summary.json`` lists the
failed cells. A rerun that succeeds removes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from prefrl.io import atomic_write_json, atomic_write_text
from prefrl.sweeps.data_check import check_sweep_data
from prefrl.sweeps.guards import (
    check_compile_cache,
    check_ray_address,
    check_same_sweep,
    default_compile_cache,
)
from prefrl.sweeps.spec import CellConfig, SweepError, SweepSpec, check_budget_scale
from prefrl.sweeps.store import ResultStore, make_record, versions

Runner = Callable[[CellConfig, Sequence[int], float], list[dict[str, Any]]]
"""``runner(cell, seeds, budget_scale) -> [metrics of seed 0, metrics of seed 1, …]``.

A runner trains the cell's learner for every seed (vmapped in one compiled
call where the learner allows) and returns one JSON-ready metrics dict per
seed, in the order of ``seeds``. Same cell and seed → same numbers.
"""


@dataclasses.dataclass(frozen=True)
class WorkUnit:
    """The missing seeds of one cell: what one worker call runs.

    ``runner`` is a module-level function, so a unit pickles (process pool, Ray).
    """

    cell: CellConfig
    runner: Runner
    seeds: tuple[int, ...]
    budget_scale: float
    sweep_name: str = ""
    compile_cache: str | None = None
    keep: tuple[int, ...] | None = None  # seeds whose records are wanted (default: all)
    cell_dir: str | None = None  # locked while the cell runs; its error.log on failure

    @property
    def wanted(self) -> tuple[int, ...]:
        return self.seeds if self.keep is None else self.keep


def enable_compile_cache(path: str) -> None:
    """Point JAX's persistent compilation cache at ``path`` (unless one is already set).

    Worker processes of a sweep share it, so a resumed sweep, a second
    worker or a Ray task reuses what another process compiled for the same
    shapes instead of paying XLA's compile time again. Process-wide: called
    only by the sweep's own workers (and the driver when it runs cells itself).
    """
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


class CellFailed(Exception):
    """A cell raised: its one-line reason, with the path of the log holding the traceback."""


def cell_slug(cell: CellConfig) -> str:
    """A filename-safe, unique name of a cell: its label plus a hash of its configuration."""
    import hashlib
    import json
    import re

    digest = hashlib.sha256(json.dumps(cell.to_dict(), sort_keys=True).encode()).hexdigest()
    return re.sub(r"[^A-Za-z0-9.-]+", "_", cell.label()).strip("_") + "_" + digest[:10]


def one_line(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    text = str(err).strip().splitlines()
    line = f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")
    return line if len(line) <= 300 else line[:297] + "..."


def execute_unit(unit: WorkUnit) -> list[dict[str, Any]]:
    """Run one unit (in whatever process) and return its complete records.

    With ``unit.cell_dir`` the cell holds that folder's lock while it runs, and
    a failure writes its traceback to ``cell_dir/error.log`` and raises
    :class:`CellFailed` with a one-line reason.
    """
    if unit.cell_dir is None:
        return _execute_unit(unit)
    from prefrl import locks

    with locks.hold(unit.cell_dir, option="--out", what="sweep cell folder"):
        try:
            records = _execute_unit(unit)
        except Exception as err:  # noqa: BLE001 - the traceback goes to the cell's log
            log = Path(unit.cell_dir) / "error.log"
            atomic_write_text(log, f"cell {unit.cell.label()} seeds {list(unit.seeds)}\n"
                              + traceback.format_exc())
            raise CellFailed(f"{one_line(err)} (traceback in {log})") from None
        (Path(unit.cell_dir) / "error.log").unlink(missing_ok=True)  # an earlier failure's
    with contextlib.suppress(OSError):  # a folder a killed run left: empty once released
        Path(unit.cell_dir).rmdir()
    return records


def _execute_unit(unit: WorkUnit) -> list[dict[str, Any]]:
    if unit.compile_cache:
        enable_compile_cache(unit.compile_cache)
    settings = unit.cell.settings.scaled(unit.budget_scale)
    cell = dataclasses.replace(unit.cell, settings=settings)
    start = time.perf_counter()
    metrics = unit.runner(cell, unit.seeds, unit.budget_scale)
    wall = time.perf_counter() - start
    if len(metrics) != len(unit.seeds):
        raise RuntimeError(
            f"runner {unit.cell.learner!r} returned {len(metrics)} results for "
            f"{len(unit.seeds)} seeds"
        )
    return [
        make_record(
            unit.cell, seed, unit.budget_scale, m, wall_time_s=wall,
            group_size=len(unit.seeds), sweep_name=unit.sweep_name,
        )
        for seed, m in zip(unit.seeds, metrics, strict=True)
        if seed in unit.wanted
    ]


def plan(
    spec: SweepSpec,
    store: ResultStore,
    runners: Mapping[str, Runner],
    *,
    budget_scale: float = 1.0,
    resume: bool = False,
    compile_cache: str | None = None,
) -> tuple[list[WorkUnit], dict[str, Any]]:
    """The units still to run and a summary ``{"total", "done", "corrupt": [...]}``.

    Without ``resume`` an existing record is an error (a different sweep's
    directory, or a rerun that would overwrite finished work).
    """
    check_budget_scale(budget_scale)
    pending: dict[CellConfig, list[int]] = {}
    done, corrupt = 0, []
    for cell, seed, rid in spec.runs(budget_scale):
        record, problem = store.read(rid)
        if record is not None:
            if not resume:
                raise SweepError(
                    f"{store.root} already holds results of this sweep (e.g. {rid}); "
                    "pass --resume to run only what is missing, or choose another --out"
                )
            done += 1
            continue
        if problem:
            corrupt.append(f"{store.path(rid)}: {problem}")
        pending.setdefault(cell, []).append(seed)
    # A cell with only some seeds missing (a record was corrupt or deleted)
    # still trains all its seeds in one vmapped call and keeps the missing
    # ones: a seed's numbers then never depend on which other seeds shared
    # its call, so every record is reproducible bit for bit.
    missing = sorted({c.learner for c in pending} - set(runners))
    if missing:
        raise SweepError(f"no runner for learner(s) {missing}; runners: {sorted(runners)}")
    units = [
        WorkUnit(c, runners[c.learner], spec.seeds, budget_scale, spec.name, compile_cache,
                 tuple(s), str(store.root / "cells" / cell_slug(c)))
        for c, s in pending.items()
    ]
    return units, {"total": len(spec.seeds) * len(spec.cells()), "done": done, "corrupt": corrupt}


@dataclasses.dataclass
class SweepOutcome:
    written: list[str]
    failed: dict[str, str]  # cell label -> error text
    skipped: int


def _write_manifest(spec: SweepSpec, store: ResultStore, budget_scale: float) -> None:
    store.root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": spec.name,
        "source": spec.source,
        "budget_scale": budget_scale,
        "seeds": list(spec.seeds),
        "cells": [c.to_dict() for c in spec.cells()],
        "versions": versions(),
    }
    atomic_write_json(store.root / "sweep.json", manifest)
    if spec.source and Path(spec.source).is_file():
        atomic_write_text(store.root / "sweep.toml", Path(spec.source).read_text("utf-8"))


def run_sweep(
    spec: SweepSpec,
    out: str | os.PathLike,
    runners: Mapping[str, Runner],
    *,
    resume: bool = False,
    budget_scale: float = 1.0,
    workers: int | None = None,
    ray_address: str | None = None,
    on_records: Callable[[list[dict[str, Any]]], None] | None = None,
    on_plan: Callable[[int, int], None] | None = None,
    compile_cache: str | None | bool = True,
    ray_timeout: float = 30.0,
) -> SweepOutcome:
    """Run every missing run of ``spec`` and store its records under ``out``.

    Args:
      spec: a validated sweep.
      out: result directory (created).
      runners: learner name → :data:`Runner` (``prefrl.studies.cells.RUNNERS``).
      resume: skip runs whose record exists; rerun missing or corrupt ones.
      budget_scale: multiplies every step budget in ``Settings`` (tests use ~0.01).
      workers: local processes (default: the number of CPU cores, at most the
        number of units); 1 runs in this process. Ignored with ``ray_address``.
      ray_address: run the units as Ray tasks on this cluster (``"local"``
        starts one here; ``"auto"`` finds a running one). Needs ``pip install
        prefrl[ray]``. If Ray is already initialised in this process, that
        instance is used.
      on_records: called in the driver with each unit's records once stored.
      on_plan: called once with ``(runs to do, runs already done)``.
      compile_cache: JAX persistent compilation cache shared by the workers:
        ``True`` uses :func:`default_compile_cache`, a path uses that (never
        inside ``out``), ``False``/``None`` none (see :func:`enable_compile_cache`).
      ray_timeout: seconds to wait for ``ray_address`` to answer before giving up.
    """
    if compile_cache is True:
        compile_cache = str(default_compile_cache())
    if compile_cache:
        compile_cache = str(check_compile_cache(compile_cache, out))
    check_before_writing(spec, out, workers, ray_address=ray_address, ray_timeout=ray_timeout)
    store = ResultStore(out)
    with store.writer_lock():
        check_same_sweep(spec, store, budget_scale)
        units, summary = plan(spec, store, runners, budget_scale=budget_scale, resume=resume,
                              compile_cache=compile_cache or None)
        return _run_locked(spec, store, units, summary, budget_scale, workers, ray_address,
                           on_records, on_plan)


def check_before_writing(spec: SweepSpec, out: str | os.PathLike,
                         workers: int | None = None, *, ray_address: str | None = None,
                         ray_timeout: float = 30.0) -> None:
    """Refuse, before any file is written, a sweep that cannot run.

    ``out`` must be a writable folder (or not exist yet), ``workers`` at least 1,
    every input fit its cells (:func:`prefrl.sweeps.data_check.check_sweep_data`)
    and a Ray cluster address answer within ``ray_timeout`` seconds.
    """
    from prefrl import preflight

    if Path(out).exists() and not Path(out).is_dir():
        raise SweepError(f"--out {out} is a file; give a result directory")
    preflight.check_output_dir(out, "--out")
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise SweepError(f"--workers must be >= 1, got {workers}")
    check_sweep_data(spec)
    if ray_address is not None:
        check_ray_address(ray_address, ray_timeout)


def _run_locked(
    spec: SweepSpec,
    store: ResultStore,
    units: list[WorkUnit],
    summary: Mapping[str, Any],
    budget_scale: float,
    workers: int | None,
    ray_address: str | None,
    on_records: Callable[[list[dict[str, Any]]], None] | None,
    on_plan: Callable[[int, int], None] | None,
) -> SweepOutcome:
    for line in summary["corrupt"]:
        print(f"rerunning corrupt record {line}", file=sys.stderr)
    _write_manifest(spec, store, budget_scale)
    if on_plan is not None:
        on_plan(sum(len(u.wanted) for u in units), summary["done"])
    outcome = SweepOutcome([], {}, summary["done"])

    def finish(unit: WorkUnit, records: list[dict[str, Any]] | None, error: str | None) -> None:
        failure = store.root / "failed" / f"{cell_slug(unit.cell)}.json"
        if error is not None:
            outcome.failed[unit.cell.label()] = error
            atomic_write_json(failure, {"cell": unit.cell.to_dict(), "label": unit.cell.label(),
                                        "seeds": list(unit.wanted), "reason": error})
            print(f"cell {unit.cell.label()} failed: {error}", file=sys.stderr)
            return
        assert records is not None
        for r in records:
            store.write(r)
            outcome.written.append(r["run_id"])
        failure.unlink(missing_ok=True)
        if on_records is not None:
            on_records(records)

    try:
        _dispatch(units, workers, ray_address, finish)
    finally:
        for name in ("cells", "failed"):  # every cell's folder went with its lock
            if (store.root / name).is_dir() and not any((store.root / name).iterdir()):
                (store.root / name).rmdir()
        atomic_write_json(store.root / "summary.json", {
            "name": spec.name, "runs": summary["total"], "already_done": summary["done"],
            "written": len(outcome.written), "failed": dict(outcome.failed)})
    return outcome


def _dispatch(units: list[WorkUnit], workers: int | None, ray_address: str | None,
              finish: Callable[..., None]) -> None:
    if not units:
        return
    if ray_address is not None:
        _run_ray(units, ray_address, finish)
        return
    n = workers if workers is not None else (os.cpu_count() or 1)
    if n < 1:
        raise SweepError(f"workers must be >= 1, got {n}")
    n = min(n, len(units))
    if n > 1:
        _run_pool(units, n, finish)
        return
    for unit in units:
        try:
            records = execute_unit(unit)
        except Exception as err:  # noqa: BLE001 - one bad cell must not stop the sweep
            finish(unit, None, str(err) if isinstance(err, CellFailed) else one_line(err))
        else:
            finish(unit, records, None)


def _run_pool(units: list[WorkUnit], n: int, finish: Callable[..., None]) -> None:
    # spawn, not fork: a forked child inherits JAX/XLA thread pools mid-state.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
        futures: dict[Future, WorkUnit] = {pool.submit(execute_unit, u): u for u in units}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for fut in done:
                err = fut.exception()
                if err is not None:  # CellFailed, or the worker process died
                    finish(futures[fut], None,
                           str(err) if isinstance(err, CellFailed) else one_line(err))
                else:
                    finish(futures[fut], fut.result(), None)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise SweepError(
            "--ray needs Ray: pip install 'prefrl[ray]' (or pip install ray)"
        ) from err
    return ray


def _run_ray(units: list[WorkUnit], address: str, finish: Callable[..., None]) -> None:
    ray = _import_ray()
    if not ray.is_initialized():
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    remote = ray.remote(num_cpus=1, max_retries=0)(_ray_execute)
    # A remote machine has no result directory: the driver keeps each cell's folder and log.
    refs = {remote.remote(dataclasses.replace(u, cell_dir=None)): u for u in units}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            unit = refs[ref]
            records, error = ray.get(ref)
            if error is not None and unit.cell_dir is not None:
                reason, _, text = error.partition("\n")
                log = Path(unit.cell_dir) / "error.log"
                atomic_write_text(log, f"cell {unit.cell.label()} seeds {list(unit.seeds)}\n"
                                  + text)
                error = f"{reason} (traceback in {log})"
            finish(unit, records, error)


def _ray_execute(unit: WorkUnit) -> tuple[list[dict[str, Any]] | None, str | None]:
    # Errors travel back as text (one line, then the traceback): the driver records them.
    try:
        return execute_unit(unit), None
    except Exception as err:  # noqa: BLE001
        return None, f"{one_line(err)}\n{traceback.format_exc()}"
