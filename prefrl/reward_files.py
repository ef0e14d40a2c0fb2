"""The two reward file kinds: a fitted reward model, and a regret-model reward r̂ = w·φ.

Both are ``.npz`` files of :func:`prefrl.io.save_npz` (atomic, no pickle)
with array names by :mod:`prefrl.param_scheme`; :mod:`prefrl.checkpoints`
registers them with the other kinds.

- ``reward_model``: a :class:`prefrl.learners.reward_model.RewardModelState`
  (``params/…`` ``[M, …]``, ``reward_mean``, ``reward_std``); the header holds
  the config, the input sizes and the segment length it was fitted on.
- ``regret_sf_reward``: the standardised regret-model reward of
  :mod:`prefrl.learners.regret_sf` (Knox et al. 2022), ``(w·φ(s, a) − mean) / std``:
  arrays ``w [d]``, ``mean``, ``std`` and φ's parameters under ``phi/…``; the
  header's ``phi`` says which φ: ``{"kind": "frozen", "reward_model_config"}``
  (the last hidden layer of a partial-return reward model, whose state is
  stored under ``phi/``) or ``{"kind": "learned", "width", "hidden"}`` (the
  default φ network). It loads as ``((SFValue, params), header)``; PPO takes
  it as ``reward_fn=SFReward(value), reward_params=params``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prefrl import config as config_lib
from prefrl.io import FileFormatError, load_npz, save_npz
from prefrl.param_scheme import (
    _check_finite,
    _refuse_non_finite,
    flatten,
    unflatten,
)

REWARD_MODEL_KIND = "reward_model"
REGRET_SF_KIND = "regret_sf_reward"


def save_reward_model(path: Any, model: Any, state: Any, *, obs_dim: int, act_dim: int,
                      segment_length: int, extra: Mapping[str, Any] | None = None) -> Path:
    """Write a fitted reward model atomically (no pickle); refuses non-finite parameters.

    ``model`` is the :class:`prefrl.learners.reward_model.RewardModel` of the
    arrays-only ``state``. Arrays: ``params/…`` ``[M, …]``, ``reward_mean``,
    ``reward_std``; the header holds the config, the input sizes and the
    segment length of the data it was fitted on and ``extra`` (e.g. metrics).
    """
    arrays = flatten(jax.device_get(state.params), "params")
    arrays["reward_mean"] = np.asarray(state.reward_mean)
    arrays["reward_std"] = np.asarray(state.reward_std)
    _refuse_non_finite(arrays, str(path))
    header = {
        "kind": REWARD_MODEL_KIND,
        "schema_version": 1,
        "config": config_lib.to_dict(model.config),
        "network": type(model.network).__name__,
        "obs_dim": int(obs_dim),
        "act_dim": int(act_dim),
        "segment_length": int(segment_length),
        "extra": dict(extra or {}),
    }
    return save_npz(path, arrays, header)


def load_reward_model(path: Any) -> tuple[tuple[Any, Any], dict[str, Any]]:
    """Read a model written by :func:`save_reward_model`: ``((model, state), header)``.

    The model has the config's default network; the state has the default
    optimizer's fresh ``opt_state``. Raises
    ``FileFormatError`` naming the problem for a wrong kind, missing or
    mis-shaped arrays or non-finite values.
    """
    from prefrl.learners import reward_model as rm

    arrays, header = load_npz(path, kind=REWARD_MODEL_KIND,
                              required=("reward_mean", "reward_std"))
    try:
        config = config_lib.from_mapping(rm.RewardModelConfig, header["config"],
                                         where=f"{path}: header field 'config'")
        obs_dim, act_dim = int(header["obs_dim"]), int(header["act_dim"])
        length = int(header["segment_length"])
    except KeyError as err:
        raise FileFormatError(f"{path}: header lacks {err}") from err
    except config_lib.ConfigError as err:  # a file's content: an input error, not an option
        raise FileFormatError(str(err)) from err
    _check_finite(arrays, str(path))
    state = reward_model_state(config, arrays, "", obs_dim, act_dim, length, str(path))
    return (rm.model(config), state), header


def reward_model_state(config: Any, arrays: Mapping[str, np.ndarray], prefix: str, obs_dim: int,
                       act_dim: int, length: int, where: str) -> Any:
    """A ``RewardModelState`` of ``config`` from arrays ``{prefix}params/…``,
    ``{prefix}reward_mean``, ``{prefix}reward_std`` (with a fresh optimiser state)."""
    from prefrl.learners import reward_model as rm
    from prefrl.types import PairBatch

    segment = (jnp.zeros((1, length, obs_dim)), jnp.zeros((1, length, act_dim)),
               jnp.ones((1, length)))
    state = rm.make(config).init(jax.random.key(0),
                                 PairBatch(*segment, *segment, jnp.zeros((1,))))
    missing = [prefix + n for n in ("reward_mean", "reward_std") if prefix + n not in arrays]
    if missing:
        raise FileFormatError(f"{where}: missing arrays {missing}")
    for name in ("reward_mean", "reward_std"):
        value, expected = arrays[prefix + name], np.shape(getattr(state, name))
        if value.shape != expected:
            raise FileFormatError(f"{where}: array {prefix + name!r} has shape {value.shape}, "
                                  f"expected {expected} (one standardisation for the model)")
        if not np.issubdtype(value.dtype, np.floating):
            raise FileFormatError(f"{where}: array {prefix + name!r} must be floating point, got "
                                  f"dtype {value.dtype}")
    std = arrays[prefix + "reward_std"]
    if not np.all(std > 0):
        raise FileFormatError(
            f"{where}: array {prefix + 'reward_std'!r} is {float(np.min(std)):g}; a reward "
            "scale must be > 0 (a negative one would make PPO maximise the negated reward)")
    return state.replace(
        params=unflatten(state.params, arrays, prefix + "params", where),
        reward_mean=jnp.asarray(arrays[prefix + "reward_mean"], jnp.float32),
        reward_std=jnp.asarray(arrays[prefix + "reward_std"], jnp.float32))


def check_reward_model_fits(header: Mapping[str, Any], batch: Any, where: str) -> None:
    """``ValueError`` naming the mismatch when a saved model's data sizes differ from ``batch``'s.

    The header records the observation size, action size and segment length
    the model was fitted on.
    """
    length, obs_dim, act_dim = (int(n) for n in (batch.obs_1.shape[1], batch.obs_1.shape[2],
                                                 batch.action_1.shape[2]))
    for name, mine, theirs in (("observation size", obs_dim, header["obs_dim"]),
                               ("action size", act_dim, header["act_dim"]),
                               ("segment length", length, header["segment_length"])):
        if mine != int(theirs):
            raise ValueError(f"{where}: {name} mismatch: the data has {mine}, the reward model "
                             f"was fitted on {theirs}")


def save_regret_sf_reward(path: Any, value: Any, params: Mapping[str, Any], *, obs_dim: int,
                          act_dim: int, task: Mapping[str, Any] | None = None,
                          extra: Mapping[str, Any] | None = None) -> Path:
    """Write a regret-model reward ``value(params, ·)`` atomically; refuses non-finite arrays.

    ``value`` is a :class:`prefrl.learners.sf_networks.SFValue` whose φ is a
    ``FrozenPhi`` (reward model with the default MLP) or a ``LearnedPhi`` of
    :func:`prefrl.learners.sf_networks.default_phi_network`; ``params`` is
    ``{"phi", "w", "mean", "std"}``. ``task`` (a task header) and ``extra``
    (e.g. fit metrics) go to the header.
    """
    from prefrl.learners import sf_networks as nets
    from prefrl.networks import MLP

    phi_from = value.phi_from
    if isinstance(phi_from, nets.FrozenPhi):
        phi = {"kind": "frozen", "reward_model_config": config_lib.to_dict(phi_from.model.config)}
        state = params["phi"]
        arrays = flatten(jax.device_get(state.params), "phi/params")
        arrays["phi/reward_mean"] = np.asarray(state.reward_mean)
        arrays["phi/reward_std"] = np.asarray(state.reward_std)
    elif isinstance(phi_from, nets.LearnedPhi) and isinstance(phi_from.module, MLP):
        phi = {"kind": "learned", "width": int(phi_from.module.out),
               "hidden": [int(h) for h in phi_from.module.hidden]}
        if phi_from.module != nets.default_phi_network(phi["width"], tuple(phi["hidden"])):
            raise ValueError("save_regret_sf_reward stores the default φ network only, got "
                             f"{phi_from.module!r}")
        arrays = flatten(jax.device_get(params["phi"]), "phi")
    else:
        raise ValueError(f"save_regret_sf_reward: unsupported φ {phi_from!r} (FrozenPhi of a "
                         "reward model, or LearnedPhi of the default φ network)")
    arrays.update({name: np.asarray(params[name]) for name in ("w", "mean", "std")})
    _refuse_non_finite(arrays, str(path))
    header = {"kind": REGRET_SF_KIND, "schema_version": 1, "phi": phi,
              "obs_dim": int(obs_dim), "act_dim": int(act_dim), "feature_dim":
              int(np.shape(params["w"])[0]), "task": dict(task) if task else None,
              "extra": dict(extra or {})}
    return save_npz(path, arrays, header)


def load_regret_sf_reward(path: Any) -> tuple[tuple[Any, dict[str, Any]], dict[str, Any]]:
    """Read :func:`save_regret_sf_reward`'s file: ``((SFValue, params), header)``.

    ``FileFormatError`` naming the problem for a wrong kind, a header without
    a known φ, missing or mis-shaped arrays or non-finite values.
    """
    from prefrl.learners import reward_model as rm
    from prefrl.learners import sf_networks as nets

    arrays, header = load_npz(path, kind=REGRET_SF_KIND, required=("w", "mean", "std"))
    where = str(path)
    _check_finite(arrays, where)
    try:
        phi, obs_dim, act_dim = dict(header["phi"]), int(header["obs_dim"]), int(header["act_dim"])
        if phi["kind"] == "frozen":
            config = config_lib.from_mapping(rm.RewardModelConfig, phi["reward_model_config"],
                                             where=where)
            state = reward_model_state(config, arrays, "phi/", obs_dim, act_dim, 1, where)
            phi_from: Any = nets.FrozenPhi(rm.model(config))
            phi_params: Any = state.replace(opt_state=None)
        elif phi["kind"] == "learned":
            module = nets.default_phi_network(int(phi["width"]), tuple(phi["hidden"]))
            phi_from = nets.LearnedPhi(module)
            template = module.init(jax.random.key(0), jnp.zeros((obs_dim + act_dim,)))
            phi_params = unflatten(template, arrays, "phi", where)
        else:
            raise FileFormatError(f"{where}: unknown φ kind {phi['kind']!r}")
    except KeyError as err:
        raise FileFormatError(f"{where}: header lacks {err}") from err
    except (config_lib.ConfigError, TypeError) as err:
        raise FileFormatError(f"{where}: header field 'phi': {err}") from err
    feature_dim = header.get("feature_dim", arrays["w"].shape[0] if arrays["w"].ndim else None)
    if arrays["w"].shape != (feature_dim,):
        raise FileFormatError(f"{where}: array 'w' has shape {arrays['w'].shape}, but the header "
                              f"says feature_dim {feature_dim}")
    for name in ("mean", "std"):
        if arrays[name].shape != ():
            raise FileFormatError(f"{where}: array {name!r} must be a scalar, got shape "
                                  f"{arrays[name].shape}")
    if not float(arrays["std"]) > 0:
        raise FileFormatError(f"{where}: array 'std' is {float(arrays['std']):g}; the reward's "
                              "scale must be > 0")
    params = {"phi": phi_params, "w": jnp.asarray(arrays["w"], jnp.float32),
              "mean": jnp.asarray(arrays["mean"], jnp.float32),
              "std": jnp.asarray(arrays["std"], jnp.float32)}
    return (nets.SFValue(phi_from), params), header


__all__ = [
    "REGRET_SF_KIND",
    "REWARD_MODEL_KIND",
    "check_reward_model_fits",
    "load_regret_sf_reward",
    "load_reward_model",
    "reward_model_state",
    "save_regret_sf_reward",
    "save_reward_model",
]
