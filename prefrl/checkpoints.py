"""One parameter-file scheme for every kind of file prefrl writes (no pickle).

A file is an ``.npz`` written atomically by :func:`prefrl.io.save_npz`:
arrays plus a JSON header holding ``kind`` and ``schema_version``. Array
names follow one scheme, :func:`flatten`: a prefix, then the pytree path of
the leaf, one ``/``-separated part per dict key, dataclass field or sequence
index — ``state/policy_params/params/Dense_0/kernel``,
``state/obs_stats/mean``, ``params/params/MLP_0/Dense_0/kernel``. PRNG keys
are stored as their raw key data (uint32). :func:`unflatten` fills a template
pytree from such names; :func:`unflatten_dict` rebuilds a nested dict (flax
parameters) without one.

Kinds (:data:`KINDS`; :func:`load` dispatches on the header's ``kind``):

- ``ppo_checkpoint`` (:func:`save_ppo`, :func:`load_ppo`): a whole
  :class:`prefrl.learners.ppo.PPOState` under ``state/…``; the header holds
  ``ppo_config``, ``obs_dim``, ``act_dim``, ``num_updates``,
  ``policy_hidden``/``value_hidden``, ``discount``, ``task``/``task_params``,
  ``reward`` (``"true"`` or a description of a learned reward),
  ``train_config``, ``progress`` and ``extra``. Checkpoints written before
  this scheme (the shipped experts) name arrays by ``jax.tree_util.keystr``
  (``state.policy_params['params']['Dense_0']['kernel']``); :func:`unflatten`
  reads both.
- ``policy`` (:func:`save_offline_policy`, :func:`load_offline_policy`): a
  BC/CPL/DPO policy, ``params/…`` plus the network in the header.
- ``reward_model`` (:func:`save_reward_model`, :func:`load_reward_model`): a
  fitted :class:`prefrl.learners.reward_model.RewardModelState`, ``params/…``
  ``[M, …]``, ``reward_mean``, ``reward_std``.
- ``regret_sf_reward`` (:func:`save_regret_sf_reward`, :func:`load_regret_sf_reward`):
  a regret-model reward r̂ = w·φ (:mod:`prefrl.reward_files`).

The naming scheme lives in :mod:`prefrl.param_scheme`, the two reward kinds
in :mod:`prefrl.reward_files`; this module re-exports both.

Any policy file (a PPO checkpoint or a ``policy``) loads as a
:class:`prefrl.policies.Policy` (:func:`read_policy`) or straight away as an
acting function (:func:`load_policy`).

The value function of a PPO checkpoint, ``V(s) = μ_R + σ_R v_θ(norm(s))``, is
in the units of the reward PPO optimised (PopArt statistics in
``state.return_stats``), so :func:`load_value_fn` of a checkpoint trained on
the true reward is in true-reward units with discount ``header["discount"]``
— what the regret oracle needs (docs/design.md §3).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from prefrl import config as config_lib
from prefrl.io import FileFormatError, load_npz, read_kind, save_npz
from prefrl.param_scheme import (  # noqa: F401 (the scheme's public names live here too)
    NonFiniteError,
    _check_finite,
    _refuse_non_finite,
    array_name,
    flatten,
    unflatten,
    unflatten_dict,
)
from prefrl.reward_files import (
    REGRET_SF_KIND,
    REWARD_MODEL_KIND,
    check_reward_model_fits,
    load_regret_sf_reward,
    load_reward_model,
    reward_model_state,
    save_regret_sf_reward,
    save_reward_model,
)

PolicyFn = Callable[[Any, jax.Array], jax.Array]

PPO_KIND = "ppo_checkpoint"
POLICY_KIND = "policy"
_STATE = "state"


# --------------------------------------------------------------------------- PPO checkpoints


def save_ppo(
    path: str | os.PathLike,
    state: Any,
    *,
    config: Any,
    obs_dim: int,
    act_dim: int,
    num_updates: int | None,
    task: Mapping[str, Any] | None = None,
    reward: str = "true",
    train_config: Mapping[str, Any] | None = None,
    progress: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write a PPO checkpoint atomically; returns its path.

    ``task`` is ``TaskSpec.to_header()`` (``{"task": name, "task_params": {...}}``).
    ``reward`` says what PPO optimised: ``"true"`` for the task's reward.
    ``arrays`` are stored beside the state (names outside ``state/``), e.g. the
    environments' state for an exact resume (:mod:`prefrl.loops.resume`).
    """
    # A learned reward's and π_ref's parameters have files of their own; β_KL as an
    # input is the run's, and the header's ppo_config holds the configured one.
    state = jax.device_get(state.replace(reward_params=None, ref_params=None,
                                         kl_ref_coef=None))
    header: dict[str, Any] = {
        "kind": PPO_KIND,
        "schema_version": 1,
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
    return save_npz(path, {**(arrays or {}), **flatten(state, _STATE)}, header)


def _ppo_config(header: Mapping[str, Any], where: str) -> Any:
    from prefrl.learners import ppo

    try:
        return config_lib.from_mapping(ppo.PPOConfig, header["ppo_config"],
                                       where=f"{where}: header field 'ppo_config'")
    except KeyError as err:
        raise FileFormatError(f"{where}: header has no {err}") from err
    except config_lib.ConfigError as err:  # a file's content: an input error, not an option
        raise FileFormatError(str(err)) from err


def check_obs_dim(header: Mapping[str, Any], obs_dim: int | None, where: str) -> None:
    """ValueError when a checkpoint's observation size differs from ``obs_dim``."""
    if obs_dim is not None and int(header["obs_dim"]) != int(obs_dim):
        task = header.get("task", "?")
        raise ValueError(
            f"{where}: observation size mismatch: checkpoint (trained on task {task!r}) has "
            f"obs_dim {header['obs_dim']}, but the target has obs_dim {obs_dim}"
        )


def _ppo_template(config: Any, header: Mapping[str, Any]) -> Any:
    from prefrl.learners import ppo

    # The state's structure does not depend on the KL-to-reference term,
    # whose π_ref is not part of the checkpoint.
    learner = ppo.make(dataclasses.replace(config, kl_ref_coef=0.0), int(header["obs_dim"]),
                       int(header["act_dim"]), num_updates=header.get("num_updates") or 1)
    template = jax.eval_shape(learner.init, jax.random.key(0))
    return jax.tree.map(
        lambda s: jax.random.key(0) if jnp.issubdtype(s.dtype, jax.dtypes.prng_key)
        else np.zeros(s.shape, s.dtype), template)


def load_ppo(
    path: str | os.PathLike, *, obs_dim: int | None = None, template: Any = None
) -> tuple[Any, dict[str, Any]]:
    """Read a PPO checkpoint: ``(state, header)``.

    The state's structure is rebuilt from the header (default optimiser), or
    taken from ``template`` (needed when training used a custom optax
    transform). ``obs_dim`` (e.g. the task's) is checked against the header.
    Raises ``FileNotFoundError``, ``FileFormatError`` (corrupt/truncated file,
    wrong kind, missing or mis-shaped arrays) or ``ValueError`` (size mismatch).
    """
    where = str(path)
    arrays, header = load_npz(path, kind=PPO_KIND, supported_versions=(1,))
    for name in ("obs_dim", "act_dim", "ppo_config"):
        if name not in header:
            raise FileFormatError(f"{where}: header has no {name!r}")
    check_obs_dim(header, obs_dim, where)
    if template is None:
        template = _ppo_template(_ppo_config(header, where), header)
    _check_finite(arrays, where)  # parameters, optimiser and normalisation statistics
    state = unflatten(template.replace(reward_params=None, ref_params=None, kl_ref_coef=None),
                      arrays, _STATE, where)
    for name, stats in (("obs_stats", state.obs_stats), ("return_stats", state.return_stats)):
        var = getattr(stats, "var", None)
        if var is not None and bool(jnp.any(var < 0)):
            raise FileFormatError(f"{where}: array 'state/{name}/var' holds a negative variance "
                                  f"({float(jnp.min(var)):g}); normalisation statistics are "
                                  "corrupt")
    return state, header


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
    from prefrl.learners import ppo

    state, header = load_ppo(path, obs_dim=obs_dim)
    if header.get("reward", "true") != "true" and not allow_proxy:
        raise ValueError(
            f"{path}: value function was trained on reward {header.get('reward')!r}, "
            "not the true reward; pass allow_proxy=True to use it anyway"
        )
    acting = ppo.make_acting(_ppo_config(header, str(path)), int(header["act_dim"]))
    value = jax.jit(acting.value)
    return lambda obs: value(state, jnp.asarray(obs, jnp.float32))


# --------------------------------------------------------------------------- offline policies


def save_offline_policy(path: Any, network: Any, params: Any, *, algo: str,
                        meta: Mapping[str, Any] | None = None) -> Path:
    """Write one BC/CPL/DPO/SAC policy atomically: arrays ``params/…`` + JSON header.

    The header records the network (``action_dim``, ``hidden``,
    ``state_dependent_std``, observation statistics), the algorithm and any
    JSON-able ``meta`` (configs, validation metrics, evaluation returns).
    """
    from flax.linen import tanh

    from prefrl.networks import activation_name

    arrays = flatten(jax.device_get(params), "params")
    _refuse_non_finite(arrays, str(path))
    header = {
        "kind": POLICY_KIND,
        "schema_version": 1,
        "algo": algo,
        "network": {"type": type(network).__name__, "action_dim": int(network.action_dim),
                    "hidden": [int(h) for h in network.hidden],
                    "state_dependent_std": bool(network.state_dependent_std),
                    "obs_mean": list(getattr(network, "obs_mean", ())),
                    "obs_std": list(getattr(network, "obs_std", ())),
                    "activation": activation_name(getattr(network, "activation", tanh))},
        "meta": dict(meta or {}),
    }
    return save_npz(path, arrays, header)


def load_offline_policy(path: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Read a policy written by :func:`save_offline_policy`: ``(network, params, header)``."""
    from prefrl.networks import make_network

    arrays, header = load_npz(path, kind=POLICY_KIND, supported_versions=(1,))
    _check_finite(arrays, str(path))
    net = header["network"]  # its types and ranges are checked by prefrl.schema
    kernels = sorted(k for k in arrays if k.startswith("params/") and k.endswith("Dense_0/kernel"))
    if not kernels or arrays[kernels[0]].ndim != 2:
        raise FileFormatError(f"{path}: no parameter arrays (expected params/…/Dense_0/kernel)")
    obs_dim = int(arrays[kernels[0]].shape[0])
    for name in ("obs_mean", "obs_std"):
        if net.get(name) and len(net[name]) != obs_dim:
            raise FileFormatError(
                f"{path}: header field 'network.{name}' has {len(net[name])} entries, but the "
                f"parameters take observations of size {obs_dim}")
    try:
        network = make_network(net["action_dim"], net["hidden"], net["state_dependent_std"],
                               net.get("obs_mean", ()), net.get("obs_std", ()),
                               net.get("activation", "tanh"))
    except (KeyError, TypeError, ValueError) as err:
        raise FileFormatError(f"{path}: header 'network' is incomplete: {err}") from err
    # The header's network must be the one whose parameters the file holds.
    template = jax.eval_shape(network.init, jax.random.key(0), jnp.zeros((1, obs_dim)))
    try:
        params = unflatten(template, arrays, "params", str(path))
    except FileFormatError as err:
        raise FileFormatError(f"{err} (header network: hidden {net['hidden']}, action_dim "
                              f"{net['action_dim']}, state_dependent_std "
                              f"{net['state_dependent_std']})") from None
    return network, params, header


# --------------------------------------------------------------------------- any policy


def read_policy(path: str | os.PathLike, *, obs_dim: int | None = None) -> tuple[Any, dict]:
    """``(Policy, header)`` of any policy file: a PPO checkpoint or a ``policy`` file.

    ``Policy.apply(params, obs) -> (mean, log_std)`` acts on raw observations
    (a normaliser is inside), so the policy also serves as a frozen π_ref.
    ``obs_dim`` is checked against the file's; the header gains ``obs_dim``
    and ``act_dim``.
    """
    from prefrl.learners import ppo
    from prefrl.policies import Policy

    header: dict[str, Any]
    if read_kind(path) == POLICY_KIND:
        network, params, header = load_offline_policy(path)
        kernels = [v for k, v in flatten(params, "").items() if k.endswith("Dense_0/kernel")]
        file_obs = int(kernels[0].shape[0]) if kernels else None
        if obs_dim is not None and file_obs is not None and file_obs != int(obs_dim):
            raise ValueError(f"{path}: policy expects observations of size {file_obs}, "
                             f"but the task's observations have size {obs_dim}")
        header = {**header, "obs_dim": file_obs, "act_dim": int(network.action_dim)}
        return Policy(network.apply, params), header
    state, header = load_ppo(path, obs_dim=obs_dim)
    apply = ppo.make_policy_apply(_ppo_config(header, str(path)), int(header["act_dim"]))
    return Policy(apply, ppo.policy_bundle(state)), header


def load_policy(
    path: str | os.PathLike, *, deterministic: bool = True, obs_dim: int | None = None
) -> tuple[PolicyFn, dict[str, Any]]:
    """``(policy_fn, info)`` from any policy file (:func:`read_policy`).

    ``policy_fn(obs [..., obs], key) -> action [..., act]`` is
    :func:`prefrl.policies.policy_fn`: ``tanh(mean)`` when ``deterministic``,
    else a sample. ``info`` is the header plus ``"apply"`` and ``"params"``.
    """
    from prefrl.policies import policy_fn

    policy, header = read_policy(path, obs_dim=obs_dim)
    return policy_fn(policy, deterministic=deterministic), {
        **header, "apply": policy.apply, "params": policy.params}


# --------------------------------------------------------------------------- the registry


class Kind(NamedTuple):
    """How one kind of file is written and read."""

    save: Callable[..., Path]
    load: Callable[..., tuple[Any, dict[str, Any]]]


KINDS: dict[str, Kind] = {
    PPO_KIND: Kind(save_ppo, load_ppo),
    POLICY_KIND: Kind(save_offline_policy,
                      lambda path: (lambda n, p, h: ((n, p), h))(*load_offline_policy(path))),
    REWARD_MODEL_KIND: Kind(save_reward_model, load_reward_model),
    REGRET_SF_KIND: Kind(save_regret_sf_reward, load_regret_sf_reward),
}


def load(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """``(object, header)`` of any prefrl parameter file, by the ``kind`` in its header.

    ``ppo_checkpoint`` → a ``PPOState``; ``policy`` → ``(network, params)``;
    ``reward_model`` → a ``RewardModelState``.
    """
    kind = read_kind(path)
    if kind not in KINDS:
        raise FileFormatError(f"{path}: kind {kind!r} is not a parameter file; known kinds: "
                              f"{sorted(KINDS)}")
    return KINDS[kind].load(path)


__all__ = [
    "KINDS",
    "Kind",
    "NonFiniteError",
    "array_name",
    "check_obs_dim",
    "check_reward_model_fits",
    "flatten",
    "load",
    "load_offline_policy",
    "load_policy",
    "load_ppo",
    "load_reward_model",
    "load_regret_sf_reward",
    "load_value_fn",
    "read_policy",
    "reward_model_state",
    "save_regret_sf_reward",
    "save_offline_policy",
    "save_ppo",
    "save_reward_model",
    "unflatten",
    "unflatten_dict",
]
