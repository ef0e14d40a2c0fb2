"""The online loop's files: settings a resume must match, ``last.npz``, JSON lines.

A checkpoint (``last.npz``, kind ``online_checkpoint``, schema 2) is the whole
:class:`~prefrl.loops.online.core.OnlineState` through the one file scheme
(:func:`prefrl.param_scheme.flatten`; the policy learner's inputs such as the
reward and π_ref parameters left out) plus both environments' arrays
(:mod:`prefrl.loops.resume`) and the run's records in the header, so a killed run
resumes bit for bit and its ``rounds.jsonl``/``evals.jsonl`` never repeat a line.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax

from prefrl import config as config_lib
from prefrl import oracles
from prefrl.io import jsonable, load_npz, save_npz
from prefrl.learners import ppo
from prefrl.learners import reward_model as rm
from prefrl.loops import resume
from prefrl.loops.online import core as core_lib
from prefrl.loops.online import registry
from prefrl.loops.online.config import OnlineConfig
from prefrl.param_scheme import flatten, unflatten

KIND = "online_checkpoint"
SCHEMA_VERSION = 2  # 2: the whole OnlineState through the file scheme


@dataclasses.dataclass
class RunLog:
    """The run's records (host-side logs; the run's state is the OnlineState)."""

    rounds: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    evals: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    timing: dict[str, float] = dataclasses.field(default_factory=lambda: {
        "rollout_s": 0.0, "ppo_s": 0.0, "select_label_s": 0.0, "fit_s": 0.0, "eval_s": 0.0})
    labels_used: int = 0
    wall_before: float = 0.0


def run_settings(c: OnlineConfig, ppo_config: ppo.PPOConfig, reward_config: rm.RewardModelConfig,
              oracle: oracles.OracleConfig, policy_config: Any = None) -> dict[str, Any]:
    """Everything a resumed run must share with the run that wrote ``last.npz`` (as JSON)."""
    settings = {"config": config_lib.result_settings(c),
                "ppo_config": config_lib.result_settings(ppo_config),
                "reward_config": config_lib.result_settings(reward_config),
                "oracle": config_lib.result_settings(oracle)}
    if policy_config is not None:  # a policy learner's own settings (cpl, advantage_greedy)
        settings["policy_config"] = config_lib.result_settings(policy_config)
    return jsonable(settings)


def _flat(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{p}.{k}" if k else p: v for p, sub in settings.items()
            for k, v in (sub.items() if isinstance(sub, dict) else [("", sub)])}


def _field_defaults() -> dict[str, Any]:
    """Flat ``part.key -> default`` of the four configs every run's settings hold."""
    return _flat(run_settings(OnlineConfig(), ppo.PPOConfig(), rm.RewardModelConfig(),
                              oracles.OracleConfig()))


def settings_diff(now: Mapping[str, Any], then: Mapping[str, Any]) -> list[str]:
    """``part.key`` names whose values differ between two :func:`run_settings` (both backends).

    A key that ``then`` lacks (a field added to a config after that run was written)
    differs only when ``now`` holds something other than the field's default: a new
    field's default keeps the old behaviour (the project's rule for new options), so
    a checkpoint of a long run stays resumable across such code changes.
    """
    a, b = _flat(now), _flat(then)
    defaults = _field_defaults()
    same = lambda k: a.get(k) == b.get(k) or (
        k not in b and k in defaults and a.get(k) == defaults[k])
    return sorted(k for k in a.keys() | b.keys() if not same(k))


def start(out_dir: Path | None, c: OnlineConfig, settings: dict[str, Any],
          fresh: core_lib.OnlineState, policy: registry.PolicyLearner, env: Any, eval_env: Any,
          records: RunLog, log: Callable[[str], None] | None
          ) -> tuple[core_lib.OnlineState, int]:
    """``(state, updates done)``: a resume from ``last.npz``, or a fresh start."""
    if out_dir is None:
        return fresh, 0
    out_dir.mkdir(parents=True, exist_ok=True)
    last = out_dir / "last.npz"
    if c.resume and last.exists():
        # Schema 1 (the loop before its core) is refused by name: use another out_dir.
        arrays, header = load_npz(last, kind=KIND, supported_versions=(SCHEMA_VERSION,))
        diff = settings_diff(settings, header["settings"])
        if diff:
            raise ValueError(f"{last}: cannot resume: the run's settings differ in {diff}; "
                             "use another out_dir or --resume false")
        view = fresh.replace(policy=policy.checkpoint_view(fresh.policy))
        loaded = unflatten(view, arrays, "online", str(last))
        policy_state = policy.restore(loaded.policy, fresh.policy)
        if bool(loaded.fitted):
            policy_state = policy.set_reward(policy_state, loaded.reward)
            if policy.set_labels is not None:
                policy_state = policy.set_labels(policy_state, loaded.labels)
        resume.restore_envs({"env": env, "eval_env": eval_env}, arrays)
        records.rounds, records.evals = header["rounds"], header["evals"]
        records.history = header["history"]
        records.timing = {k: float(v) for k, v in header["timing"].items()}
        records.labels_used = int(header["labels_used"])
        records.wall_before = float(header["wall_s"])
        # The logs hold exactly what the checkpoint has seen: no repeated lines after resume.
        for name, rows in (("rounds.jsonl", records.rounds), ("evals.jsonl", records.evals)):
            resume.rewrite_jsonl(out_dir / name, [
                jsonable({k: v for k, v in r.items() if k != "returns"}) for r in rows])
        if log:
            log(f"resuming {last} at update {header['update']}/{c.num_updates}")
        return loaded.replace(policy=policy_state), int(header["update"])
    if (out_dir / "result.json").exists() and c.resume:
        raise FileExistsError(f"{out_dir} holds a finished run (result.json); use another "
                              "out_dir or resume=False to overwrite it")
    for name in ("rounds.jsonl", "evals.jsonl", "result.json", "last.npz"):
        (out_dir / name).unlink(missing_ok=True)
    return fresh, 0


def save(path: Path, state: core_lib.OnlineState, policy: registry.PolicyLearner, env: Any,
         eval_env: Any, settings: dict[str, Any], records: RunLog, update_idx: int,
         wall: float) -> None:
    envs = resume.env_arrays({"env": env, "eval_env": eval_env})
    if envs is None:
        raise TypeError("checkpoints of the online loop need environments with state_dict()")
    view = state.replace(policy=policy.checkpoint_view(state.policy))
    arrays = {**flatten(jax.device_get(view), "online"), **envs}
    header = {"kind": KIND, "schema_version": SCHEMA_VERSION, "update": update_idx,
              "settings": settings, "labels_used": records.labels_used,
              "rounds": jsonable(records.rounds), "evals": jsonable(records.evals),
              "history": records.history, "timing": records.timing,
              "wall_s": records.wall_before + wall}
    save_npz(path, arrays, header)


def progress_bar(config: OnlineConfig, start: int) -> Any:
    if not config.progress or not sys.stderr.isatty():
        return None  # a bar only on a terminal: logs and CI stay free of its frames
    from tqdm import tqdm

    return tqdm(total=config.num_updates, initial=start, unit="upd", dynamic_ncols=True)


def write_record(out_dir: Path | None, name: str, record: Mapping[str, Any],
           log: Callable[[str], None] | None) -> None:
    line = json.dumps(jsonable(record))
    if out_dir is not None:
        with open(out_dir / name, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    if log is not None:
        log(line)


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("labels_used", "wall_s", "timing", "env_steps", "schedule")
    out = {k: result[k] for k in keep}
    out["final"] = dict(result["final"])
    out["rounds"] = result["rounds"]
    out["evaluations"] = [{k: v for k, v in e.items() if k != "returns"}
                          for e in result["evaluations"]]
    return jsonable(out)
