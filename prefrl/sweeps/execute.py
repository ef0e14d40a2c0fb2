"""Running a sweep: plan the missing runs, execute them locally or on Ray, store the records.

No JAX here: the runners (:data:`prefrl.studies.cells.RUNNERS`, one per
learner) are handed in by the caller, so this module schedules work without
knowing what it computes. The seeds of one cell go to its runner together
(one vmapped call where the learner allows). Cells run in a process pool
(``spawn`` start method: forking a process that has initialised JAX's thread
pools can deadlock) or as Ray tasks (``ray_address``); the driver alone
writes records, so both paths produce the same store. Workers share a
persistent XLA compilation cache (``DIR/.jax_cache``), so a resumed sweep does
not pay compile time again.
"""

from __future__ import annotations

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


def execute_unit(unit: WorkUnit) -> list[dict[str, Any]]:
    """Run one unit (in whatever process) and return its complete records."""
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
                 tuple(s))
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
        ``True`` uses ``out/.jax_cache``, a path uses that, ``False``/``None``
        none (see :func:`enable_compile_cache`).
    """
    check_before_writing(spec, out, workers)
    store = ResultStore(out)
    if compile_cache is True:
        compile_cache = str(Path(out).resolve() / ".jax_cache")
    with store.writer_lock():
        units, summary = plan(spec, store, runners, budget_scale=budget_scale, resume=resume,
                              compile_cache=compile_cache or None)
        return _run_locked(spec, store, units, summary, budget_scale, workers, ray_address,
                           on_records, on_plan)


def check_before_writing(spec: SweepSpec, out: str | os.PathLike,
                         workers: int | None = None) -> None:
    """Refuse, before any file is written, a sweep that cannot run.

    ``out`` must be a folder (or not exist yet), ``workers`` at least 1, and
    every dataset fit its cells (:func:`prefrl.sweeps.data_check.check_sweep_data`).
    """
    if Path(out).exists() and not Path(out).is_dir():
        raise SweepError(f"--out {out} is a file; give a result directory")
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise SweepError(f"--workers must be >= 1, got {workers}")
    check_sweep_data(spec)


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
        if error is not None:
            outcome.failed[unit.cell.label()] = error
            print(f"cell {unit.cell.label()} failed:\n{error}", file=sys.stderr)
            return
        assert records is not None
        for r in records:
            store.write(r)
            outcome.written.append(r["run_id"])
        if on_records is not None:
            on_records(records)

    if not units:
        return outcome
    if ray_address is not None:
        _run_ray(units, ray_address, finish)
    else:
        n = workers if workers is not None else (os.cpu_count() or 1)
        if n < 1:
            raise SweepError(f"workers must be >= 1, got {n}")
        n = min(n, len(units))
        if n == 1:
            for unit in units:
                try:
                    records = execute_unit(unit)
                except Exception:  # noqa: BLE001 - one bad cell must not stop the sweep
                    finish(unit, None, traceback.format_exc())
                else:
                    finish(unit, records, None)
        else:
            _run_pool(units, n, finish)
    return outcome


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
                if err is not None:
                    text = "".join(traceback.format_exception(err))
                    finish(futures[fut], None, text)
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
    refs = {remote.remote(u): u for u in units}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            records, error = ray.get(ref)
            finish(refs[ref], records, error)


def _ray_execute(unit: WorkUnit) -> tuple[list[dict[str, Any]] | None, str | None]:
    # Errors travel back as text: the driver reports the cell and carries on.
    try:
        return execute_unit(unit), None
    except Exception:  # noqa: BLE001
        return None, traceback.format_exc()
