"""The host side of the MJX online loop: ``prefrl train online --backend mjx``.

:func:`run` calls the jitted round of :mod:`prefrl.loops.online.mjx` once per
round (everything inside a round stays on the device), writes one JSON line
of metrics per round, evaluates the policy on the C engine (the project's
one evaluator, :func:`prefrl.loops.ppo_mjx.evaluate`), writes the run's files
and resumes a killed run from ``last.npz`` bit for bit.
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

from prefrl import checkpoints, oracles
from prefrl import config as config_lib
from prefrl.envs import parse_task_params
from prefrl.envs.mjx_options import GPU, SolverOptions
from prefrl.io import atomic_write_json, jsonable, load_npz
from prefrl.learners import ppo
from prefrl.learners import reward_model as rm
from prefrl.loops import ppo_mjx, resume
from prefrl.loops.online.config import OnlineConfig, default_reward_config
from prefrl.loops.online.core import OnlineState
from prefrl.loops.online.files import settings_diff
from prefrl.loops.online.mjx import Metrics, default_inputs, jitted_trainer, ppo_train_config


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


def _settings(config: OnlineConfig, ppo_config: ppo.PPOConfig,
              reward_config: rm.RewardModelConfig, oracle: oracles.OracleConfig,
              solver: SolverOptions | None) -> dict[str, Any]:
    """Everything a resumed run must share with the run that wrote ``last.npz`` (as JSON)."""

    return jsonable({
        "config": config_lib.result_settings(config),
        "ppo_config": config_lib.result_settings(ppo_config),
        "reward_config": config_lib.result_settings(reward_config),
        "oracle": config_lib.result_settings(oracle),
        "solver": config_lib.result_settings(solver) if solver else None})


def _start(out_dir: Path | None, config: OnlineConfig, settings: dict[str, Any],
           state: OnlineState, log: Callable[[str], None] | None
           ) -> tuple[OnlineState, int, float]:
    """``(state, rounds done, wall seconds before)``: a resume from ``last.npz``, or a fresh start.

    A resume restores the whole device state (PPO, MJX physics, reward model,
    pool, labels, keys) and cuts ``rounds.jsonl``/``evals.jsonl`` back to it;
    a fresh start removes the old files. A finished run (``result.json``) is
    refused unless ``resume`` is off.
    """

    if out_dir is None:
        return state, 0, 0.0
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.resume and (out_dir / "result.json").exists():
        raise FileExistsError(f"{out_dir} holds a finished run (result.json); use another "
                              "out_dir or --resume false to overwrite it")
    last = out_dir / "last.npz"
    if config.resume and last.exists():
        arrays, header = load_npz(last, kind=checkpoints.PPO_KIND)
        saved = header["extra"].get("online_mjx")
        if saved is None:
            raise ValueError(f"{last}: cannot resume: not written by the MJX online loop; use "
                             "another out_dir or --resume false")
        diff = settings_diff(settings, saved)
        if diff:
            raise ValueError(f"{last}: cannot resume: the run's settings differ in {diff}; use "
                             "another out_dir or --resume false")
        state = resume.restore_device_state(state, arrays, str(last))
        done = int(header["extra"]["rounds_done"])
        for name in ("rounds.jsonl", "evals.jsonl"):
            resume.truncate_jsonl(out_dir / name, done * config.refit_every)
        if log is not None:
            log(f"resuming {last} after round {done}")
        return state, done, float(header["extra"]["wall_s"])
    for name in ("rounds.jsonl", "evals.jsonl", "result.json", "last.npz", "final.npz",
                 "reward_model.npz"):
        (out_dir / name).unlink(missing_ok=True)
    return state, 0, 0.0


def run(config: OnlineConfig, ppo_config: ppo.PPOConfig,
        reward_config: rm.RewardModelConfig | None = None,
        oracle: oracles.OracleConfig | None = None, *, solver: SolverOptions | None = GPU,
        log: Callable[[str], None] | None = None,
        stop_after_rounds: int | None = None) -> dict[str, Any]:
    """Run the loop on MJX: a host loop over the jitted round, one JSON line per round.

    Returns ``{"final": evaluation, "rounds": records, "evaluations", "labels_used",
    "env_steps", "wall_s", "state"}``. Every ``eval_every`` updates (at the end
    of the round that passes them) and at the end the policy is evaluated on
    the C engine. With ``config.out_dir``: ``rounds.jsonl``, ``evals.jsonl``,
    ``final.npz`` (a PPO checkpoint, ``prefrl.checkpoints.load_ppo`` reads it),
    ``reward_model.npz``, ``result.json`` and, at the end of the round that
    passes every ``checkpoint_every`` updates, ``last.npz``: a PPO checkpoint
    of the policy that also holds the whole device state, so running the same
    command again continues bit for bit. ``stop_after_rounds`` stops early, as
    if interrupted. Raises ``checkpoints.NonFiniteError`` when a PPO update
    diverges.
    """

    reward_config = default_reward_config() if reward_config is None else reward_config
    oracle = oracles.OracleConfig() if oracle is None else oracle
    trainer, init, round_fn = jitted_trainer(config, ppo_config, reward_config, oracle, solver)
    state = init(jax.random.key(config.seed), default_inputs(ppo_config, reward_config, oracle))
    out_dir = Path(config.out_dir) if config.out_dir else None
    settings = _settings(config, ppo_config, reward_config, oracle, solver)
    state, start, wall_before = _start(out_dir, config, settings, state, log)
    num_updates = trainer.num_rounds * config.refit_every
    tc = ppo_train_config(config, num_updates)
    spec = parse_task_params(config.task, config.task_param)
    rounds: list[dict[str, Any]] = []
    evaluations: list[dict[str, Any]] = []
    t_start = time.perf_counter()

    def write(name: str, record: dict[str, Any]) -> str:
        line = json.dumps(jsonable(record))
        if out_dir is not None:
            with open(out_dir / name, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        return line

    r = start - 1
    for r in range(start, trainer.num_rounds):
        if stop_after_rounds is not None and r >= stop_after_rounds:
            r -= 1
            break
        t0 = time.perf_counter()
        state, metrics = round_fn(state, jnp.int32(r))  # the first call compiles
        metrics = jax.device_get(metrics)  # waits for the round: round_s is its real time
        record = _record(metrics, r, config, config.refit_every, time.perf_counter() - t0)
        if record["nonfinite"]:
            raise checkpoints.NonFiniteError(f"a PPO update of round {r} on MJX diverged")
        updates = record["update"]
        if r == trainer.num_rounds - 1 or _passes(updates, config.refit_every,
                                                  config.eval_every):
            evaluation = ppo_mjx.evaluate(trainer.ppo, state.policy.ppo, tc,
                                          ppo_config.discount, updates)
            evaluations.append(evaluation)
            record["eval_return"] = evaluation["mean_return"]
            write("evals.jsonl", {k: v for k, v in evaluation.items() if k != "returns"})
        rounds.append(record)
        line = write("rounds.jsonl", record)
        if log is not None:
            log(line)
        if out_dir is not None and (r == trainer.num_rounds - 1 or _passes(
                updates, config.refit_every, config.checkpoint_every)):
            wall = wall_before + time.perf_counter() - t_start
            _save_policy(out_dir / "last.npz", state, config, ppo_config, solver,
                         num_updates, updates,
                         {"online_mjx": settings, "rounds_done": r + 1, "wall_s": wall},
                         resume.device_state_arrays(state))
    wall = wall_before + time.perf_counter() - t_start
    steps = (r + 1) * config.refit_every * config.steps_per_update
    if out_dir is not None:  # the whole run's records, also those before a resume
        rounds = resume.read_jsonl(out_dir / "rounds.jsonl")
        evaluations = resume.read_jsonl(out_dir / "evals.jsonl")
    result = {"final": evaluations[-1] if r == trainer.num_rounds - 1 else {},
              "rounds": rounds, "evaluations": evaluations,
              "labels_used": int(state.labels.count), "env_steps": steps, "wall_s": wall,
              "schedule": [int(x) for x in trainer.counts], "state": state}
    if out_dir is not None and r == trainer.num_rounds - 1:
        final = {k: v for k, v in result["final"].items() if k != "returns"}
        _save_policy(out_dir / "final.npz", state, config, ppo_config, solver, num_updates,
                     num_updates, {"eval": final, "labels_used": int(state.labels.count)})
        checkpoints.save_reward_model(
            out_dir / "reward_model.npz", trainer.model, state.policy.ppo.reward_params,
            obs_dim=spec.obs_dim, act_dim=spec.act_dim, segment_length=config.segment_length,
            extra={"labels_used": int(state.labels.count)})
        summary = {k: v for k, v in result.items() if k not in ("state", "evaluations")}
        summary["final"] = final
        atomic_write_json(out_dir / "result.json", jsonable({**summary, "backend": "mjx"}))
    return result


def _passes(updates: int, refit_every: int, every: int) -> bool:
    """Whether the round ending at ``updates`` passed a multiple of ``every`` (0: never)."""
    return bool(every) and updates // every > (updates - refit_every) // every


def _save_policy(path: Path, state: OnlineState, config: OnlineConfig,
                 ppo_config: ppo.PPOConfig, solver: SolverOptions | None, num_updates: int,
                 updates: int, extra: dict[str, Any],
                 arrays: dict[str, np.ndarray] | None = None) -> None:
    """A PPO checkpoint of the run's policy after ``updates`` of ``num_updates``.

    ``arrays``: the device state, for a resume (``last.npz``).
    """

    spec = parse_task_params(config.task, config.task_param)
    checkpoints.save_ppo(
        path, ppo_mjx.checkpoint_state(state.policy.ppo.replace(reward_params=None), ppo_config,
                                       num_updates),
        config=ppo_config, obs_dim=spec.obs_dim, act_dim=spec.act_dim, num_updates=num_updates,
        task=spec.to_header(), reward="online",
        progress={"update": updates, "env_steps": updates * config.steps_per_update},
        train_config={**config_lib.to_dict(config), "backend": "mjx",
                      "solver": config_lib.to_dict(solver) if solver else None},
        extra=extra, arrays=arrays)


__all__ = ["run"]
