"""Exact resume, shared by the training loops (PPO and the online loop).

A checkpoint that is to continue bit for bit holds, next to the learner's
state, every environment's :meth:`prefrl.rollout.BatchedEnv.state_dict`
(physics incl. the solver warm-start, episode steps, reset generators) under
``"<name>.<key>"`` array names (:func:`env_arrays`, :func:`restore_envs`).
After a resume the run redoes the updates after its checkpoint, so the
JSON-lines logs are cut back to what the checkpoint has seen
(:func:`rewrite_jsonl`, :func:`truncate_jsonl`) and never repeat a line.

Environments without ``state_dict`` (test doubles, other simulators) cannot
be restored: :func:`env_arrays` returns ``None`` for them and the caller
falls back to fresh environments.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def env_arrays(envs: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """``{"<name>.<key>": array}`` of every env's ``state_dict()``; ``None`` if one lacks it."""
    if not all(hasattr(env, "state_dict") for env in envs.values()):
        return None
    return {f"{name}.{k}": np.asarray(v) for name, env in envs.items()
            for k, v in env.state_dict().items()}


def has_env_arrays(arrays: Mapping[str, np.ndarray], names: Iterable[str]) -> bool:
    """Whether ``arrays`` hold a saved state for every env in ``names``."""
    return all(any(k.startswith(f"{name}.") for k in arrays) for name in names)


def restore_envs(envs: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Load each env's state saved by :func:`env_arrays` (``ValueError`` if it does not fit)."""
    for name, env in envs.items():
        prefix = f"{name}."
        env.load_state_dict({k[len(prefix):]: v for k, v in arrays.items()
                             if k.startswith(prefix)})


def rewrite_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Replace ``path`` (atomically) by one JSON line per record."""
    from prefrl.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(dict(r)) + "\n" for r in records))


def truncate_jsonl(path: Path, update: int, key: str = "update") -> None:
    """Keep only the lines of ``path`` whose ``key`` (``"update"``) is at most ``update``.

    A line cut by a kill mid-write (not valid JSON) goes too.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and int(record.get(key, 0)) <= update:
            kept.append(record)
    rewrite_jsonl(path, kept)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSON-lines file (none when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


# ------------------------------------------------------------------ device-resident state (MJX)

DEVICE_STATE = "device_state"


def device_state_arrays(state: Any) -> dict[str, np.ndarray]:
    """Every leaf of a device-resident run state (MJX loops) as ``device_state/…`` arrays.

    The whole pytree is stored — physics incl. the solver warm-start, episode
    returns, optimiser state, pools, label buffers, PRNG keys (as key data) —
    so the jitted step continues from it exactly as from the state in memory.
    """
    import jax

    from prefrl.param_scheme import flatten

    return flatten(jax.device_get(state), DEVICE_STATE)


def restore_device_state(template: Any, arrays: Mapping[str, np.ndarray], where: str) -> Any:
    """``template``'s pytree filled from :func:`device_state_arrays`'s arrays.

    Refuses (``FileFormatError`` naming the array) a missing array, another
    shape or another dtype: the file was written by a run of other settings,
    and a silent cast would change the numbers. (The MJX states hold no
    weak-typed leaf, so the restored state compiles to the same step.)
    """
    import jax

    from prefrl.io import FileFormatError
    from prefrl.param_scheme import _is_key, array_name, unflatten

    for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        name = array_name(DEVICE_STATE, path)
        expected = jax.random.key_data(leaf) if _is_key(leaf) else leaf
        if name in arrays and arrays[name].dtype != np.dtype(expected.dtype):
            raise FileFormatError(f"{where}: array {name!r} has dtype {arrays[name].dtype}, "
                                  f"expected {np.dtype(expected.dtype)} (another precision?)")
    return unflatten(template, arrays, DEVICE_STATE, where)
