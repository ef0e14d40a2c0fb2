"""Learners that really assume regret: label model × learner on half-cheetah (issue #13).

Rows: the preference model that produced the labels (DESIGN.md §2–§3) —
partial return Σ_t r_t, or regret Σ_t γ^t A_E(s_t, a_t) with the expert
critic V_E standing in for V*. Columns: four learners (DESIGN.md §4), all
fitted to the *same* queries of a seed:

* ``reward_ppo`` — r̂ by the partial-return BT loss (Christiano et al. 2017,
  ``reward_model``), then PPO from scratch on the standardised r̂;
* ``regret_sf_ppo`` — r̂ = w·φ fitted under the **regret** model (Knox et al.
  2022, ``regret_sf``)::

      regret_r̂(σ) = V̂*(s_0) − [Σ_{t<k} γ^t w·φ(s_t, a_t) + γ^k V̂*(s_k)]
      V̂*(s)       = max_{π∈Π} w·ψ^π(s),   ψ^π(s) = E_π[Σ_t γ^t φ(s_t, a_t) | s_0 = s]

  Π is a library of policies (default: the task expert's snapshots and its
  final policy; ``library_final=False`` drops the final expert, whose critic
  is the regret oracle's V_E). Each π ∈ Π is rolled out with the C engine
  (sampled actions) from fresh resets *and* from the pool's own segment start
  states (``library_rollouts``, :meth:`prefrl.rollout.BatchedEnv.set_state`),
  ψ^π is regressed on Monte-Carlo φ-returns of its rollouts (bootstrapped
  with ψ at truncation: ``prefrl.learners.successor_features.fit_successor_features``),
  then w is fitted by the BT loss on −regret_r̂. φ is frozen (the last hidden
  layer of the partial-return r̂ fitted on the same labels) or learned with
  ψ refitted every ``refit_every`` updates (``successor_features.alternate``). Then
  PPO on the standardised r̂;
* ``advantage_ppo`` — Â fitted by the BT loss on Σ γ^t Â (Knox et al. 2023,
  ``reward_model(assumption="advantage")``) and handed to PPO as if it were a
  reward: the "mistake" of their title;
* ``advantage_greedy`` — the same Â used greedily: advantage-weighted
  regression on the training segments' own actions (``advantage_policy``).

Per cell: held-out preference accuracy against *both* oracles' labels (ties
excluded; the learned score is Σ r̂, −regret_r̂ or Σ γ^t Â), EPIC distance
(Gleave et al. 2021) of the function PPO optimises to the true reward, and
the true return of the resulting policy (deterministic actions, the same
start states for every policy). Across seeds: IQM with a 95 % bootstrap
interval. A seed resamples the held-out half of the segments, the queries,
the validation split and every initialisation.

ψ-fit quality (``regret_sf_ppo`` cells): on held-out rollouts of every
π ∈ Π (other resets and pool start states, ``heldout_steps`` long),
``psi_rel_error = ‖ψ^π(s_t) − G_t‖_F / ‖G_t‖_F`` with G_t the Monte-Carlo
discounted φ-return to the end of the rollout (tail bootstrapped with ψ;
only the first half of each rollout counts, so the tail weighs at most
``tail_weight`` ≈ γ^(T/2)), and ``value_rel_error`` the same for the values
w·ψ vs w·G relative to the spread of w·G (1 − R² under a square root).

Cells are resumable: one JSON file per (task, label, learner, seed), written
atomically and skipped when present (its settings fingerprint must match).

The study is split by role:

* ``learner_assumption_config`` — ``LearnerAssumptionConfig``, ``QUICK``,
  ``quick_config``, the label/learner/metric names;
* ``learner_assumption_library`` — Π, its rollouts, ψ and its fit quality
  (``load_library``, ``library_rollouts``, ``PsiNetwork``, ``fit_library_psi``,
  ``psi_fit_quality`` …);
* ``learner_assumption_data`` — a task's labelled pool, a seed's split, EPIC
  samples, the learned rewards as hashable values;
* ``learner_assumption_fit`` — r̂/Â, the regret-SF r̂, AWR, PPO;
* ``learner_assumption_cells`` — ``TaskContext`` and ``run_cell``;
* this module — the resumable driver: ``cell_path``, ``run``;
* ``prefrl.report.learner_assumption`` — the tables: ``format_markdown``,
  ``summary_line``, ``write_report``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from prefrl import config as config_lib
from prefrl import evaluation
from prefrl.io import jsonable
from prefrl.studies.learner_assumption_cells import TaskContext, run_cell
from prefrl.studies.learner_assumption_config import (
    METRICS,
    RESULT_STEM,
    LearnerAssumptionConfig,
)

Log = Callable[[str], None]


def cell_path(out_dir: str | Path, task: str, label: str, learner: str, seed: int) -> Path:
    """``OUT/cells/TASK/LABEL/LEARNER/seed_S.json``: one file per cell."""
    return Path(out_dir) / "cells" / task / label / learner / f"seed_{int(seed)}.json"


def _read_cell(path: Path, fingerprint: str) -> dict[str, Any]:
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("fingerprint") != fingerprint:
        raise ValueError(f"{path} was written with other settings (fingerprint "
                         f"{record.get('fingerprint')} ≠ {fingerprint}); use another --out-dir or "
                         "delete the cells to recompute")
    return record


def run(config: LearnerAssumptionConfig, log: Log | None = None) -> dict[str, Any]:
    """Run (or resume) every cell, then aggregate; returns the report as a dict.

    All inputs of all tasks are loaded and checked first. Cells whose file
    exists are read, not recomputed. The result holds per-seed metrics and
    IQM [95 % CI] per (task, label, learner), the ψ-fit quality, the
    expert/random reference returns and the PPO settings.
    """
    from prefrl.io import atomic_write_json

    t0 = time.perf_counter()
    say = log or (lambda _msg: None)
    fingerprint = config.fingerprint()
    contexts = {task: TaskContext(config, task) for task in config.tasks}
    ran = skipped = 0
    records: list[dict[str, Any]] = []
    references: dict[str, Any] = {}
    for task, ctx in contexts.items():
        ref_path = Path(config.out_dir) / "cells" / task / "reference.json"
        if ref_path.is_file():
            references[task] = _read_cell(ref_path, fingerprint)["reference"]
        else:
            references[task] = jsonable(ctx.reference())
            atomic_write_json(ref_path, {"fingerprint": fingerprint,
                                         "reference": references[task]})
        for label in config.labels:
            for learner in config.learners:
                for seed in range(config.seeds):
                    path = cell_path(config.out_dir, task, label, learner, seed)
                    if path.is_file():
                        records.append(_read_cell(path, fingerprint))
                        skipped += 1
                        continue
                    record = jsonable(run_cell(config, ctx, label, learner, seed))
                    atomic_write_json(path, record)
                    records.append(record)
                    ran += 1
                    ret = record["metrics"]["return"]
                    say(f"[{time.perf_counter() - t0:7.1f} s] {task} {label} {learner} "
                        f"seed {seed}: return {ret:.1f}, {record['wall_s']:.1f} s")
        if ctx.library is not None:
            references[task]["library"] = ctx.library.names
    return _aggregate(config, records, references, ran, skipped, time.perf_counter() - t0)


def _aggregate(config: LearnerAssumptionConfig, records: list[dict[str, Any]],
               references: dict[str, Any], ran: int, skipped: int, wall: float
               ) -> dict[str, Any]:
    tables: dict[str, dict[str, Any]] = {}
    for task in config.tasks:
        rows: dict[str, Any] = {}
        for label in config.labels:
            for learner in config.learners:
                cell = [r for r in records if (r["task"], r["label"], r["learner"]) ==
                        (task, label, learner)]
                names = list(METRICS) + (["psi_rel_error", "value_rel_error",
                                          "negative_regret_fraction"]
                                         if learner == "regret_sf_ppo" else [])
                if "speed_error" in cell[0]["metrics"]:
                    names.append("speed_error")
                per_seed = {m: [r["metrics"].get(m) for r in cell] for m in names}
                iqm = {}
                for m, values in per_seed.items():
                    if any(v is None for v in values):
                        iqm[m] = None
                        continue
                    iqm[m] = list(evaluation.bootstrap_ci(np.asarray(values, np.float64),
                                                          reps=config.bootstrap_reps))
                rows[f"{label}/{learner}"] = {"per_seed": per_seed, "iqm": iqm}
        tables[task] = rows
    return {
        "study": RESULT_STEM,
        "config": config_lib.to_dict(config),
        "fingerprint": config.fingerprint(),
        "ppo": {"steps": config.ppo_steps, "kl_ref_coef": config.kl_ref_coef,
                "envs": config.ppo_envs, "rollout_steps": config.ppo_rollout_steps,
                "epochs": config.ppo_epochs},
        "tables": tables,
        "reference": references,
        "cells_run": ran,
        "cells_skipped": skipped,
        "wall_s": wall,
    }


__all__ = ["cell_path", "jsonable", "run"]
