"""Online preference-based RL (Christiano et al. 2017, "Deep RL from human preferences").

One run alternates, on the batched C-engine environments:

1. **RL on the current learned reward.** PPO collects a ``[T, B]`` rollout
   with its current policy and updates on ``r̂(s, a)``, computed *inside* the
   jitted PPO update from ``state.reward_params`` — a refit replaces those
   parameters and never recompiles the update (docs/design.md §4b).
2. **A candidate pool from the current policy.** Every rollout is cut into
   segments of ``segment_length`` steps that join a bounded FIFO pool
   (:class:`prefrl.data.pool.SegmentPool`). The true rewards travel along for
   the oracle only; nothing the learner sees is computed from them.
3. **Query selection** every ``refit_every`` PPO updates (a *round*):
   ``oversample × n`` uniform candidate pairs from the pool, of which the ``n``
   with the largest ensemble disagreement (variance of P(σ¹≻σ²) across
   members) or entropy are kept (B-Pref's oversample-then-select), or ``n``
   uniform ones.
4. **Labels** from any project oracle (:func:`prefrl.oracles.label_queries`,
   the same function the offline pipeline uses, every irrationality
   included). ``n`` follows a :mod:`prefrl.loops.schedule` with an exact
   budget; queries the oracle skips count against it.
5. **A refit** of the reward ensemble on every label so far: warm start from
   the current members, a fresh bootstrap resample per member, a held-out
   validation slice (every ``1/valid_fraction``-th label), then
   standardisation of r̂ to mean 0 / std 1 on the newest rollout's
   state-actions, so PPO always sees a unit-scale reward.

**The critic across refits.** Each refit changes the reward PPO optimises.
PPO's PopArt statistics rescale V when the *scale* of the value targets moves,
but V still predicts returns of the old reward; the critic relearns within a
few updates (its targets are GAE returns of the new reward). Standardising r̂
on the current policy's state-actions keeps consecutive rewards on the same
scale, so the jump is in shape only; per-round records log PPO's value loss
on the updates just before and just after each refit (``value_loss_before``/
``value_loss_after``) to show its size.

**Defaults, and why uniform selection.** Tuned on seeds 10 and 11 only (the
benchmark reports seeds 0–4). With ensemble *disagreement* and a 4096-segment
pool, ``target-speed`` failed: the policy overshot v* = 2 (4.8 m/s, return
−3173, worse than random) because every member had learned "faster is better"
from the early, slow segments, so the members *agreed* on the overshooting
segments and disagreement kept querying old ones; held-out accuracy on fresh
queries from the current policy fell to 0.16–0.4 while training accuracy was 1.
Uniform queries from a 1024-segment pool (the last ~8 PPO updates at 64 × 64)
ask about what the policy does now: ``target-speed`` −408 at 1 M steps
(normalised 0.89), and on ``run`` 6301 / 6485 (disagreement: 6782 / 6557).

Per round, ``rounds.jsonl`` records labels used, the true and proxy reward of
the newest rollout, the Pearson correlation of r̂ with r on it, held-out
accuracy on fresh queries from the current policy under each oracle
(labelled separately, never trained on, outside the budget), and the wall
time split between rollouts, PPO, selection/labelling and fitting.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from prefrl import oracles
from prefrl.learners import ppo
from prefrl.learners import reward_model as rm
from prefrl.loops.online_checkpoint import save, start_run
from prefrl.loops.online_config import SELECTIONS, OnlineConfig, default_reward_config
from prefrl.loops.online_run import Run, jsonable


class OnlineResult(dict):
    """``final`` evaluation, per-round ``rounds``, ``evaluations``, timings and the states."""


def train(
    config: OnlineConfig,
    ppo_config: ppo.PPOConfig | None = None,
    reward_config: rm.RewardModelConfig | None = None,
    oracle: oracles.OracleConfig | None = None,
    *,
    env_factory: Callable[[int, int], Any] | None = None,
    log: Callable[[str], None] | None = None,
    callback: Callable[[Any, dict[str, Any]], None] | None = None,
    stop_after_updates: int | None = None,
) -> OnlineResult:
    """Run the online loop; returns the final evaluation, per-round records and timings.

    ``env_factory(num_envs, seed)`` builds environments (default: the C-engine
    :class:`prefrl.rollout.BatchedEnv` of ``config.task``). With
    ``config.out_dir``, writes ``rounds.jsonl``, ``evals.jsonl``,
    ``result.json`` and, every ``checkpoint_every`` updates, ``last.npz``:
    the whole run (PPO and reward states, labelled pairs, pool, schedule
    position, the environments' physics and RNG states), from which a killed
    run resumes exactly (``config.resume``). ``callback(run, record)`` is
    called after each round with the run's host state (tests, custom logs).
    ``stop_after_updates`` stops early as if killed (for tests of resume).
    """
    ppo_config = ppo.PPOConfig() if ppo_config is None else ppo_config
    reward_config = default_reward_config() if reward_config is None else reward_config
    oracle = oracles.OracleConfig() if oracle is None else oracle
    run = Run(config, ppo_config, reward_config, oracle, env_factory, log)
    out_dir = Path(config.out_dir) if config.out_dir else None
    start = start_run(run, out_dir)
    bar = _progress_bar(config, start)
    t_start = time.perf_counter()
    update_idx = start
    try:
        for update_idx in range(start + 1, config.num_updates + 1):
            if stop_after_updates is not None and update_idx > stop_after_updates:
                update_idx -= 1
                break
            _iteration(run, update_idx, out_dir, callback)
            if out_dir is not None and (update_idx % config.checkpoint_every == 0
                                        or update_idx == config.num_updates):
                save(run, out_dir / "last.npz", update_idx, time.perf_counter() - t_start)
            if bar is not None:
                bar.update(1)
                score = f"{run.evals[-1]['mean_return']:.0f}" if run.evals else "-"
                bar.set_postfix({"labels": run.labels_used, "eval": score})
    finally:
        if bar is not None:
            bar.close()
        run.close()
    wall = run.wall_before + time.perf_counter() - t_start
    result = OnlineResult(
        final=run.evals[-1] if run.evals else {}, rounds=run.rounds, evaluations=run.evals,
        history=run.history, labels_used=run.labels_used, wall_s=wall, timing=dict(run.timing),
        env_steps=update_idx * config.steps_per_update, updates=update_idx,
        schedule=[int(x) for x in run.counts], ppo_state=run.ppo_state, reward_state=run.rm_state,
        reward_model=run.model,
        pool=run.pool, labels=run.labels, ppo_update=run.update,
    )
    if out_dir is not None and update_idx == config.num_updates:
        from prefrl.io import atomic_write_json

        atomic_write_json(out_dir / "result.json", _summary(result))
    return result


def _iteration(run: Run, update_idx: int, out_dir: Path | None,
               callback: Callable[[Any, dict[str, Any]], None] | None) -> None:
    """One PPO update: rollout, a labelling round when due, the update, an evaluation when due."""
    c = run.c
    traj, rows = run.rollout(update_idx)
    round_idx = run.round_at.get(update_idx)
    record = None
    if round_idx is not None:
        record = _round(run, round_idx, update_idx, traj, rows)
        run.rounds.append(record)
    t0 = time.perf_counter()
    run.ppo_state, metrics = run.update(run.ppo_state, run.ppo_batch(traj))
    metrics = jax.device_get(metrics)
    run.timing["ppo_s"] += time.perf_counter() - t0
    if bool(metrics["nonfinite"]):
        raise ValueError(f"PPO update {update_idx} produced non-finite values")
    run.history.append({"update": update_idx, "value_loss": float(metrics["value_loss"]),
                        "proxy_reward": float(metrics["proxy_reward"]),
                        "true_reward": float(metrics["true_reward"])})
    if record is not None:
        # Logged after the update, so the record holds PPO's view of the new reward.
        _note_value_loss(run.rounds, run.history, run.round_at, update_idx)
        record["proxy_reward"] = run.history[-1]["proxy_reward"]
        _write(out_dir, "rounds.jsonl", record, run.log)
        if callback is not None:
            callback(run, record)
    if update_idx == c.num_updates or (c.eval_every and update_idx % c.eval_every == 0):
        result = run.evaluate(update_idx)
        result["labels_used"] = run.labels_used
        run.evals.append(result)
        _write(out_dir, "evals.jsonl", {k: v for k, v in result.items() if k != "returns"}, None)


def _round(run: Run, round_idx: int, update_idx: int, traj: Any, rows: np.ndarray
           ) -> dict[str, Any]:
    """Select, label, store and refit; returns the round's record."""
    c = run.c
    n = int(run.counts[round_idx])
    t0 = time.perf_counter()
    record: dict[str, Any] = {"round": round_idx, "update": update_idx,
                              "env_steps": (update_idx - 1) * c.steps_per_update}
    if n > 0 and c.offline_dataset:
        seg, first, second, lab = _dataset_labels(run, n)
    elif n > 0:
        first, second = run.select(round_idx, n)
        seg = run.pool.segments()
        lab = run.label(jax.random.fold_in(run.keys["label"], round_idx), first, second,
                        run.oracle)
    if n > 0:
        # Every 1/valid_fraction-th label (by position in the run) is held out.
        pos = run.labels.count + np.arange(n)
        every = int(round(1 / c.valid_fraction)) if c.valid_fraction > 0 else 0
        split = (pos % every == every - 1) if every else np.zeros(n, bool)
        run.labels.add(seg, first, second, lab.label, lab.keep.astype(np.float32),
                       split.astype(np.float32))
        run.labels_used += n
        record["skipped"] = int(n - np.sum(lab.keep))
    run.timing["select_label_s"] += time.perf_counter() - t0
    record.update(labels=n, labels_used=run.labels_used,
                  true_reward=float(np.mean(traj.reward)))
    if n > 0 or run.rm_state is None:
        record.update(run.refit(round_idx, traj))
    t0 = time.perf_counter()
    record.update(run.heldout(round_idx, rows))
    run.timing["select_label_s"] += time.perf_counter() - t0
    record["wall"] = dict(run.timing)
    return record


def _dataset_labels(run: Run, n: int) -> tuple[Any, np.ndarray, np.ndarray, oracles.Labels]:
    """``n`` queries of ``offline_dataset`` (a seeded subset) with its stored labels."""
    from prefrl.data import dataset as dataset_io

    data, header = dataset_io.load(run.c.offline_dataset)
    if header.get("task") not in (None, run.c.task):
        raise ValueError(f"{run.c.offline_dataset}: dataset of task {header.get('task')!r}, "
                         f"the run is on {run.c.task!r}")
    if data.segments.length != run.c.segment_length:
        raise ValueError(f"{run.c.offline_dataset}: segments of length {data.segments.length}; "
                         f"set segment_length={data.segments.length}")
    if run.c.offline_label not in data.labels:
        raise ValueError(f"{run.c.offline_dataset} has no labels {run.c.offline_label!r}; "
                         f"it has {sorted(data.labels)}")
    if data.num_queries < n:
        raise ValueError(f"{run.c.offline_dataset} has {data.num_queries} queries, the budget "
                         f"is {n}")
    rows = np.sort(np.random.default_rng(run.c.seed).permutation(data.num_queries)[:n])
    label = np.asarray(data.labels[run.c.offline_label], np.float32)[rows]
    mask = data.label_mask.get(run.c.offline_label) if data.label_mask else None
    keep = np.ones(n, bool) if mask is None else np.asarray(mask, bool)[rows]
    lab = oracles.Labels(label=label, keep=keep, score_1=np.zeros(n), score_2=np.zeros(n))
    return data.segments, np.asarray(data.first)[rows], np.asarray(data.second)[rows], lab


def _note_value_loss(rounds: list[dict[str, Any]], history: list[dict[str, Any]],
                     round_at: Mapping[int, int], update_idx: int) -> None:
    # PPO's value loss on the update before a refit and on the one right after it.
    if update_idx in round_at and rounds and rounds[-1]["update"] == update_idx:
        rounds[-1]["value_loss_after"] = history[-1]["value_loss"]
        if len(history) >= 2:
            rounds[-1]["value_loss_before"] = history[-2]["value_loss"]


def _progress_bar(config: OnlineConfig, start: int) -> Any:
    import sys

    if not config.progress or not sys.stderr.isatty():
        return None  # a bar only on a terminal: logs and CI stay free of its frames
    from tqdm import tqdm

    return tqdm(total=config.num_updates, initial=start, unit="upd", dynamic_ncols=True)


def _write(out_dir: Path | None, name: str, record: Mapping[str, Any],
           log: Callable[[str], None] | None) -> None:
    line = json.dumps(jsonable(record))
    if out_dir is not None:
        with open(out_dir / name, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    if log is not None:
        log(line)


def _summary(result: OnlineResult) -> dict[str, Any]:
    keep = ("labels_used", "wall_s", "timing", "env_steps", "schedule")
    out = {k: result[k] for k in keep}
    out["final"] = {k: v for k, v in result["final"].items()}
    out["rounds"] = result["rounds"]
    out["evaluations"] = [{k: v for k, v in e.items() if k != "returns"}
                          for e in result["evaluations"]]
    return jsonable(out)


__all__ = ["SELECTIONS", "OnlineConfig", "OnlineResult", "default_reward_config", "train"]
