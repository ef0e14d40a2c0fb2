"""The host side of the MJX online loop: ``prefrl train online --backend mjx``.

:func:`run` calls the jitted round of :mod:`prefrl.loops.online_mjx` once per
round (everything inside a round stays on the device), writes one JSON line
of metrics per round, evaluates the final policy on the C engine (the
project's one evaluator, :func:`prefrl.loops.ppo_mjx.evaluate`) and writes
the run's files.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prefrl import oracles
from prefrl.envs import parse_task_params
from prefrl.envs.mjx_options import GPU, SolverOptions
from prefrl.learners import ppo
from prefrl.learners import reward_model as rm
from prefrl.loops import ppo_mjx
from prefrl.loops.online_config import OnlineConfig, default_reward_config
from prefrl.loops.online_mjx import (
    Metrics,
    OnlineState,
    OnlineTrainer,
    default_inputs,
    jitted_trainer,
    ppo_train_config,
)


def _record(metrics: Metrics, round_idx: int, config: OnlineConfig, refit_every: int,
            seconds: float) -> dict[str, Any]:
    updates = (round_idx + 1) * refit_every
    record: dict[str, Any] = {"round": round_idx, "update": updates,
                              "env_steps": updates * config.steps_per_update}
    for name, value in jax.device_get(metrics).items():
        value = np.asarray(value).item()
        if isinstance(value, float) and not math.isfinite(value):
            continue  # NaN: nothing of that kind this round (no refit, no episode ended)
        record[name] = bool(value) if isinstance(value, bool | np.bool_) else value
    record["round_s"] = seconds
    return record


def run(config: OnlineConfig, ppo_config: ppo.PPOConfig,
        reward_config: rm.RewardModelConfig | None = None,
        oracle: oracles.OracleConfig | None = None, *, solver: SolverOptions | None = GPU,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the loop on MJX: a host loop over the jitted round, one JSON line per round.

    Returns ``{"final": evaluation, "rounds": records, "labels_used", "env_steps",
    "wall_s", "state"}``. With ``config.out_dir``: ``rounds.jsonl``,
    ``final.npz`` (a PPO checkpoint, ``prefrl.checkpoints.load_ppo`` reads it),
    ``reward_model.npz`` and ``result.json``. No resume. Raises
    ``checkpoints.NonFiniteError`` when a PPO update diverges.
    """
    from prefrl import checkpoints
    from prefrl.io import atomic_write_json
    from prefrl.loops.online_run import jsonable

    reward_config = default_reward_config() if reward_config is None else reward_config
    oracle = oracles.OracleConfig() if oracle is None else oracle
    trainer, init, round_fn = jitted_trainer(config, ppo_config, reward_config, oracle, solver)
    state = init(jax.random.key(config.seed), default_inputs(ppo_config, reward_config, oracle))
    out_dir = Path(config.out_dir) if config.out_dir else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "rounds.jsonl").write_text("")
    rounds: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for r in range(trainer.num_rounds):
        t0 = time.perf_counter()
        state, metrics = round_fn(state, jnp.int32(r))  # the first call compiles
        metrics = jax.device_get(metrics)  # waits for the round: round_s is its real time
        record = _record(metrics, r, config, config.refit_every, time.perf_counter() - t0)
        if record["nonfinite"]:
            raise checkpoints.NonFiniteError(f"a PPO update of round {r} on MJX diverged")
        rounds.append(record)
        line = json.dumps(jsonable(record))
        if out_dir is not None:
            with open(out_dir / "rounds.jsonl", "a", encoding="utf-8") as f:
                f.write(line + "\n")
        if log is not None:
            log(line)
    wall = time.perf_counter() - t_start
    num_updates = trainer.num_rounds * config.refit_every
    tc = ppo_train_config(config, num_updates)
    final = ppo_mjx.evaluate(trainer.ppo, state.train.ppo, tc, ppo_config.discount)
    steps = num_updates * config.steps_per_update
    final.update(update=num_updates, env_steps=steps)
    result = {"final": final, "rounds": rounds, "labels_used": int(state.labels.count),
              "env_steps": steps, "wall_s": wall, "schedule": [int(x) for x in trainer.counts],
              "state": state}
    if out_dir is not None:
        _save(out_dir, trainer, state, config, ppo_config, solver, final, num_updates)
        summary = {k: v for k, v in result.items() if k != "state"}
        summary["final"] = {k: v for k, v in final.items() if k != "returns"}
        atomic_write_json(out_dir / "result.json", jsonable({**summary, "backend": "mjx"}))
    return result


def _save(out_dir: Path, trainer: OnlineTrainer, state: OnlineState, config: OnlineConfig,
          ppo_config: ppo.PPOConfig, solver: SolverOptions | None, final: dict[str, Any],
          num_updates: int) -> None:
    """``final.npz`` (PPO checkpoint) and ``reward_model.npz`` (the last refit)."""
    from prefrl import checkpoints
    from prefrl import config as config_lib

    spec = parse_task_params(config.task, config.task_param)
    reward = state.train.ppo.reward_params
    steps = num_updates * config.steps_per_update
    checkpoints.save_ppo(
        out_dir / "final.npz",
        ppo_mjx.checkpoint_state(state.train.ppo.replace(reward_params=None), ppo_config,
                                 num_updates),
        config=ppo_config, obs_dim=spec.obs_dim, act_dim=spec.act_dim, num_updates=num_updates,
        task=spec.to_header(), reward="online", progress={"update": num_updates,
                                                          "env_steps": steps},
        train_config={**config_lib.to_dict(config), "backend": "mjx",
                      "solver": config_lib.to_dict(solver) if solver else None},
        extra={"eval": {k: v for k, v in final.items() if k != "returns"},
               "labels_used": int(state.labels.count)})
    checkpoints.save_reward_model(out_dir / "reward_model.npz", trainer.model, reward,
                                  obs_dim=spec.obs_dim, act_dim=spec.act_dim,
                                  segment_length=config.segment_length,
                                  extra={"labels_used": int(state.labels.count)})


__all__ = ["run"]
