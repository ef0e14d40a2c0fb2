"""PPO checkpoints: parameters, normaliser statistics and config in one ``.npz`` (no pickle).

Format (``kind = "ppo_checkpoint"``, ``schema_version = 1``), written with
:func:`prefrl.io.save_npz` (atomic: temp file + ``os.replace``):

- arrays: every leaf of the :class:`prefrl.learners.ppo.PPOState` pytree under
  the name ``"state" + jax.tree_util.keystr(path)``, e.g.
  ``state.policy_params['params']['Dense_0']['kernel']``,
  ``state.obs_stats.mean``, ``state.return_stats.var``; PRNG keys are stored as
  their raw ``key_data`` (uint32).
- JSON header: ``ppo_config`` (every :class:`PPOConfig` field), ``obs_dim``,
  ``act_dim``, ``num_updates`` (the optimiser's annealing length),
  ``policy_hidden``/``value_hidden``, ``discount``, ``task`` / ``task_params``
  (when trained on a task), ``reward`` (``"true"`` or a description of a
  learned/proxy reward), ``train_config``, ``progress`` (``update``,
  ``env_steps``) and free-form ``extra`` (e.g. evaluation results).

The value function ``V(s) = μ_R + σ_R v_θ(norm(s))`` is stored in the units of
the reward PPO optimised (PopArt statistics in ``state.return_stats``), so
:func:`load_value_fn` of a checkpoint trained on the true reward is in true
reward units with discount ``header["discount"]`` — what the regret oracle needs
(DESIGN §3).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prefrl import config as config_lib
from prefrl.io import FileFormatError, load_npz, save_npz
from prefrl.learners import ppo

KIND = "ppo_checkpoint"
SCHEMA_VERSION = 1
_STATE = "state"

PolicyFn = Callable[[Any, jax.Array], jax.Array]


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def flatten_tree(tree: Any, prefix: str) -> dict[str, np.ndarray]:
    """``{prefix + keystr(path): leaf}`` for every leaf (PRNG keys as key data)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = jax.random.key_data(leaf) if _is_key(leaf) else leaf
        out[prefix + jax.tree_util.keystr(path)] = np.asarray(value)
    return out


def unflatten_tree(template: Any, arrays: Mapping[str, np.ndarray], prefix: str, where: str) -> Any:
    """Fill ``template``'s structure from ``arrays`` (names as in :func:`flatten_tree`).

    Raises ``FileFormatError`` naming a missing array or a shape mismatch.
    """
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, leaf in paths:
        name = prefix + jax.tree_util.keystr(path)
        if name not in arrays:
            raise FileFormatError(f"{where}: missing array {name!r}")
        value = arrays[name]
        expected = jax.random.key_data(leaf) if _is_key(leaf) else leaf
        if tuple(value.shape) != tuple(np.shape(expected)):
            raise FileFormatError(
                f"{where}: array {name!r} has shape {value.shape}, expected "
                f"{tuple(np.shape(expected))} (network sizes do not match the header?)"
            )
        if _is_key(leaf):
            leaves.append(jax.random.wrap_key_data(jnp.asarray(value, jnp.uint32)))
        else:
            leaves.append(jnp.asarray(value, dtype=np.asarray(expected).dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def save(
    path: str | os.PathLike,
    state: ppo.PPOState,
    *,
    config: ppo.PPOConfig,
    obs_dim: int,
    act_dim: int,
    num_updates: int | None,
    task: Mapping[str, Any] | None = None,
    reward: str = "true",
    train_config: Mapping[str, Any] | None = None,
    progress: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a PPO checkpoint atomically; returns its path.

    ``task`` is ``TaskSpec.to_header()`` (``{"task": name, "task_params": {...}}``).
    ``reward`` says what PPO optimised: ``"true"`` for the task's reward.
    """
    # A learned reward's and π_ref's parameters have files of their own.
    state = jax.device_get(state.replace(reward_params=None, ref_params=None))
    arrays = flatten_tree(state, _STATE)
    header: dict[str, Any] = {
        "kind": KIND,
        "schema_version": SCHEMA_VERSION,
        "algo": "ppo",
        "ppo_config": config_lib.to_dict(config),
        "obs_dim": int(obs_dim),
        "act_dim": int(act_dim),
        "num_updates": None if num_updates is None else int(num_updates),
        "policy_hidden": list(config.policy_hidden),
        "value_hidden": list(config.value_hidden),
        "discount": float(config.discount),
        "reward": reward,
        "train_config": dict(train_config or {}),
        "progress": dict(progress or {}),
        "extra": dict(extra or {}),
    }
    if task is not None:
        header.update(task)
    return save_npz(path, arrays, header)


def _config_from_header(header: Mapping[str, Any], where: str) -> ppo.PPOConfig:
    try:
        return config_lib.from_mapping(ppo.PPOConfig, header["ppo_config"], where=where)
    except KeyError as err:
        raise FileFormatError(f"{where}: header has no {err}") from err


def check_obs_dim(header: Mapping[str, Any], obs_dim: int | None, where: str) -> None:
    """ValueError when a checkpoint's observation size differs from ``obs_dim``."""
    if obs_dim is not None and int(header["obs_dim"]) != int(obs_dim):
        task = header.get("task", "?")
        raise ValueError(
            f"{where}: observation size mismatch: checkpoint (trained on task {task!r}) has "
            f"obs_dim {header['obs_dim']}, but the target has obs_dim {obs_dim}"
        )


def load(
    path: str | os.PathLike,
    *,
    obs_dim: int | None = None,
    template: ppo.PPOState | None = None,
) -> tuple[ppo.PPOState, dict[str, Any]]:
    """Read a checkpoint: ``(state, header)``.

    The state's structure is rebuilt from the header (default optimiser), or
    taken from ``template`` (needed when training used a custom optax
    transform). ``obs_dim`` (e.g. the task's) is checked against the header.
    Raises ``FileNotFoundError``, ``FileFormatError`` (corrupt/truncated file,
    wrong kind, missing or mis-shaped arrays) or ``ValueError`` (size mismatch).
    """
    where = str(path)
    arrays, header = load_npz(path, kind=KIND, supported_versions=(SCHEMA_VERSION,))
    for field in ("obs_dim", "act_dim", "ppo_config"):
        if field not in header:
            raise FileFormatError(f"{where}: header has no {field!r}")
    check_obs_dim(header, obs_dim, where)
    config = _config_from_header(header, where)
    if template is None:
        # The state's structure does not depend on the KL-to-reference term,
        # whose π_ref is not part of the checkpoint.
        learner = ppo.make(
            dataclasses.replace(config, kl_ref_coef=0.0),
            int(header["obs_dim"]),
            int(header["act_dim"]),
            num_updates=header.get("num_updates") or 1,
        )
        template = jax.eval_shape(learner.init, jax.random.key(0))
        template = jax.tree.map(
            lambda s: jax.random.key(0) if jnp.issubdtype(s.dtype, jax.dtypes.prng_key)
            else np.zeros(s.shape, s.dtype),
            template,
        )
    state = unflatten_tree(template.replace(reward_params=None, ref_params=None), arrays, _STATE,
                           where)
    for name, tree in (("policy", state.policy_params), ("value", state.value_params)):
        if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree)):
            raise FileFormatError(f"{where}: non-finite {name} parameters")
    return state, header


def load_policy(
    path: str | os.PathLike, *, deterministic: bool = True, obs_dim: int | None = None
) -> tuple[PolicyFn, dict[str, Any]]:
    """A jitted ``policy_fn(obs [..., obs], key) -> action [..., act]`` from a checkpoint.

    ``deterministic=True`` acts with ``tanh(mean)``, else samples the
    tanh-Gaussian. ``info`` is the header plus ``"apply"`` and ``"params"``:
    ``apply(params, obs) -> (mean, log_std)`` on raw observations (the
    normaliser is inside), usable as a frozen reference policy π_ref.
    Offline policy files (``prefrl train bc|cpl|dpo``, kind ``"policy"``) load
    through the same call, so ``prefrl eval``/``collect`` take either.
    """
    from prefrl.io import read_kind

    if read_kind(path) == "policy":
        from prefrl import offline

        policy_fn, info = offline.load_policy_fn(path, deterministic=deterministic)
        from flax import traverse_util

        first = [
            v for k, v in traverse_util.flatten_dict(info["params"]).items()
            if k[-1] == "kernel" and "Dense_0" in k
        ]
        file_obs = first[0].shape[0] if first else None
        if obs_dim is not None and file_obs is not None and int(file_obs) != obs_dim:
            raise ValueError(
                f"{path}: policy expects observations of size {file_obs}, "
                f"but the task's observations have size {obs_dim}"
            )
        info.setdefault("obs_dim", file_obs)
        info.setdefault("act_dim", int(info["network"]["action_dim"]))
        return policy_fn, info
    state, header = load(path, obs_dim=obs_dim)
    config = _config_from_header(header, str(path))
    apply = ppo.make_policy_apply(config, int(header["act_dim"]))
    params = ppo.policy_bundle(state)
    from prefrl.networks import tanh_gaussian_mode, tanh_gaussian_sample

    @jax.jit
    def act(params: Any, obs: jax.Array, key: jax.Array) -> jax.Array:
        mean, log_std = apply(params, obs)
        if deterministic:
            return tanh_gaussian_mode(mean)
        return tanh_gaussian_sample(key, mean, log_std)[0]

    def policy_fn(obs: Any, key: jax.Array) -> jax.Array:
        return act(params, jnp.asarray(obs, jnp.float32), key)

    info = dict(header)
    info.update(apply=apply, params=params)
    return policy_fn, info


def load_value_fn(
    path: str | os.PathLike, *, obs_dim: int | None = None, allow_proxy: bool = False
) -> Callable[[Any], jax.Array]:
    """A jitted ``value_fn(obs [..., obs]) -> V [...]`` in the units of the true reward.

    ``V(s)`` estimates the discounted return (γ = the header's ``discount``)
    of the checkpoint's stochastic policy. PPO's value normalisation is
    undone (PopArt statistics), so no rescaling is needed. A checkpoint
    trained on a learned/proxy reward raises ``ValueError`` unless
    ``allow_proxy`` (its V is in the proxy's units).
    """
    state, header = load(path, obs_dim=obs_dim)
    if header.get("reward", "true") != "true" and not allow_proxy:
        raise ValueError(
            f"{path}: value function was trained on reward {header.get('reward')!r}, "
            "not the true reward; pass allow_proxy=True to use it anyway"
        )
    config = _config_from_header(header, str(path))
    acting = ppo.make_acting(config, int(header["act_dim"]))
    value = jax.jit(acting.value)

    def value_fn(obs: Any) -> jax.Array:
        return value(state, jnp.asarray(obs, jnp.float32))

    return value_fn
