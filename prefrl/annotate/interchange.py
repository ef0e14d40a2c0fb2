"""Preference files of other projects: Uni-RLHF and imitation.

**Uni-RLHF** (Yuan et al. 2024; its offline baselines, Clean-Offline-RLHF,
read the labels in ``rlhf/train_reward_model.py``). Labels do not carry
segments: they point into a *flat transition dataset* (D4RL's
``qlearning_dataset``: ``observations``, ``actions``, ``rewards``,
``next_observations``, ``terminals``, one row per transition). A label folder
holds three pickles whose names end in
``domain_<domain>_env_<env>_num_<Q>_len_<query_len>`` and sort as
(labels, ``indices_1``, ``indices_2``):

* ``indices_1``, ``indices_2`` — ``[Q]`` start rows: the query's segments are
  rows ``[start, start + query_len)`` of the flat dataset;
* ``human_label`` — ``[Q]`` ints: **0 first preferred, 1 second, −1 equal**
  (their loader turns −1 into ½/½).

Ours is ``label = P(first ≻ second)``: 1 ↔ 0, 0 ↔ 1, ½ ↔ −1. Skipped
queries are not exported (the format has no "can't tell"). The flat dataset
is written as ``.npz`` with each pool segment as its own block of
``k`` rows (``timeouts`` set on a block's last row, as D4RL marks episode
ends) plus ``infos/qpos`` and ``infos/qvel`` (D4RL's names), so an imported
file can still be rendered. Pickles are read with an unpickler that accepts
only lists, numbers and numpy arrays: a label file cannot run code.

**imitation** (Gleave et al. 2022, ``imitation.algorithms.preference_comparisons``):
a ``PreferenceDataset`` holds ``fragments1``, ``fragments2`` (``TrajectoryWithRew``:
``obs`` ``[k + 1, …]``, ``acts`` ``[k, …]``, ``rews`` ``[k]``) and
``preferences [Q]`` = P(fragment 1 ≻ fragment 2) — our convention. Its own
file is a pickle of those classes, so the interchange file here is an ``.npz``
of the same arrays stacked (``fragments1_obs [Q, k + 1, obs]``, …,
``preferences``); :func:`to_imitation` builds imitation's objects from it
where imitation is installed.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from prefrl.io import FileFormatError, atomic_write_bytes, read_npz_arrays
from prefrl.types import PreferenceDataset, Segments

OURS_TO_UNIRLHF = {1.0: 0, 0.0: 1, 0.5: -1}
UNIRLHF_TO_OURS = {0: 1.0, 1: 0.0, -1: 0.5}
FLAT_KEYS = ("observations", "actions", "rewards", "next_observations", "terminals")


# --------------------------------------------------------------------------- safe pickles


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles lists, numbers and numpy arrays only; anything else is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
               ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("builtins", "list"), ("builtins", "int"),
               ("builtins", "float")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numbers, lists "
                                         "and numpy arrays may be in a label file)")
        return super().find_class(module, name)


def read_pickle_array(path: str | os.PathLike, dtype: Any) -> np.ndarray:
    """A ``[Q]`` array from a pickled list or numpy array (nothing else is unpickled)."""
    try:
        with open(path, "rb") as f:
            value = _ArrayUnpickler(f).load()
        array = np.asarray(value)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise FileFormatError(f"{path}: not a pickled list or array of numbers: {err}") from err
    if array.ndim != 1:
        raise FileFormatError(f"{path}: expected a [Q] list, got shape {array.shape}")
    if not np.all(np.isfinite(array.astype(np.float64))) or (
            np.issubdtype(dtype, np.integer) and np.any(array != np.round(array))):
        raise FileFormatError(f"{path}: holds values that are not whole numbers")
    return array.astype(dtype)


def _pickle_bytes(array: np.ndarray) -> bytes:
    return pickle.dumps(np.asarray(array), protocol=4)


# --------------------------------------------------------------------------- Uni-RLHF


def unirlhf_suffix(domain: str, env: str, num_query: int, query_len: int) -> str:
    return f"domain_{domain}_env_{env}_num_{num_query}_len_{query_len}"


def export_unirlhf(folder: str | os.PathLike, dataset: PreferenceDataset, label_name: str, *,
                   env: str = "halfcheetah-prefrl", domain: str = "mujoco",
                   label_kind: str = "human_label") -> dict[str, Path]:
    """Write ``dataset``'s ``label_name`` labels as Uni-RLHF files into ``folder``.

    Returns the written paths: ``dataset`` (the flat ``.npz``), ``labels``,
    ``indices_1``, ``indices_2``. Skipped (masked) queries are left out.
    """
    if label_name not in dataset.labels:
        raise KeyError(f"no labels named {label_name!r}; have {sorted(dataset.labels)}")
    seg = dataset.segments
    n, k = seg.num_segments, seg.length
    keep = np.asarray(dataset.label_mask[label_name], bool)
    if not keep.any():
        raise ValueError(f"no answered {label_name!r} labels to export")
    ours = np.asarray(dataset.labels[label_name])[keep]
    labels = np.array([OURS_TO_UNIRLHF[float(v)] for v in ours], np.int64)
    first = np.asarray(dataset.first)[keep].astype(np.int64) * k
    second = np.asarray(dataset.second)[keep].astype(np.int64) * k
    flat = {
        "observations": np.asarray(seg.obs).reshape(n * k, -1),
        "actions": np.asarray(seg.action).reshape(n * k, -1),
        "rewards": np.asarray(seg.reward).reshape(n * k),
        "next_observations": np.asarray(seg.next_obs).reshape(n * k, -1),
        "terminals": np.zeros(n * k, bool),
        "timeouts": np.tile(np.arange(k) == k - 1, n),
        "infos/qpos": np.asarray(seg.qpos).reshape(n * k, -1),
        "infos/qvel": np.asarray(seg.qvel).reshape(n * k, -1),
    }
    folder = Path(folder)
    suffix = unirlhf_suffix(domain, env, int(keep.sum()), k)
    buf = io.BytesIO()
    np.savez(buf, **flat)
    paths = {"dataset": atomic_write_bytes(folder / f"{env}_transitions.npz", buf.getvalue())}
    for key, name, array in (("labels", label_kind, labels), ("indices_1", "indices_1", first),
                             ("indices_2", "indices_2", second)):
        paths[key] = atomic_write_bytes(folder / f"{name}_{suffix}.pkl", _pickle_bytes(array))
    return paths


def find_unirlhf_files(folder: str | os.PathLike) -> tuple[Path, Path, Path, int]:
    """``(labels, indices_1, indices_2, query_len)`` in a Uni-RLHF label folder."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("*.pkl") if "_domain_" in p.name)
    if len(files) != 3:
        raise FileFormatError(f"{folder}: expected 3 Uni-RLHF label files (labels, indices_1, "
                              f"indices_2, named …domain_D_env_E_num_Q_len_L.pkl), found "
                              f"{[p.name for p in files]}")
    labels, first, second = files  # the order their loader relies on
    if not (first.name.startswith("indices_1") and second.name.startswith("indices_2")):
        raise FileFormatError(f"{folder}: files {[p.name for p in files]} do not sort as "
                              "(labels, indices_1…, indices_2…)")
    try:
        query_len = int(labels.stem.rsplit("_len_", 1)[1])
    except (IndexError, ValueError) as err:
        raise FileFormatError(f"{labels}: no _len_<query_len> in the name") from err
    return labels, first, second, query_len


def import_unirlhf(folder: str | os.PathLike, flat_path: str | os.PathLike,
                   query_len: int | None = None, label_name: str = "human") -> PreferenceDataset:
    """A :class:`PreferenceDataset` from a Uni-RLHF label folder and its flat transition ``.npz``.

    Each distinct start row becomes one pool segment (rows ``[start, start +
    query_len)``; ``s_k`` from ``next_observations``); labels convert to ours
    (0 → 1, 1 → 0, −1 → ½). ``query_len`` defaults to the one in the names.
    """
    label_path, first_path, second_path, named_len = find_unirlhf_files(folder)
    query_len = named_len if query_len is None else query_len
    labels = read_pickle_array(label_path, np.int64)
    first = read_pickle_array(first_path, np.int64)
    second = read_pickle_array(second_path, np.int64)
    if not labels.shape == first.shape == second.shape:
        raise FileFormatError(f"{folder}: labels, indices_1 and indices_2 have lengths "
                              f"{labels.size}, {first.size}, {second.size}")
    bad = ~np.isin(labels, list(UNIRLHF_TO_OURS))
    if bad.any():
        raise FileFormatError(f"{label_path}: label {int(labels[bad][0])}; Uni-RLHF labels are "
                              "0 (first), 1 (second) or -1 (equal)")
    flat = read_npz_arrays(flat_path)
    missing = [k for k in FLAT_KEYS if k not in flat]
    if missing:
        raise FileFormatError(f"{flat_path}: missing {missing} (a flat transition dataset has "
                              f"{list(FLAT_KEYS)})")
    rows = flat["observations"].shape[0]
    for side, starts in (("indices_1", first), ("indices_2", second)):
        if starts.size and (starts.min() < 0 or starts.max() + query_len > rows):
            raise FileFormatError(f"{folder}: {side} holds a start whose segment of "
                                  f"{query_len} rows leaves the {rows}-row dataset")
    starts, inverse = np.unique(np.concatenate([first, second]), return_inverse=True)
    window = starts[:, None] + np.arange(query_len)[None, :]  # [N, k] rows
    n = starts.size

    def take(key: str, default_dim: int | None = None) -> np.ndarray:
        if key in flat:
            return np.asarray(flat[key])[window]
        return np.zeros((n, query_len, default_dim or 0), np.float32)

    segments = Segments(
        obs=jnp.asarray(take("observations"), jnp.float32),
        action=jnp.asarray(take("actions"), jnp.float32),
        reward=jnp.asarray(take("rewards"), jnp.float32),
        next_obs=jnp.asarray(take("next_observations"), jnp.float32),
        mask=jnp.ones((n, query_len), jnp.float32),
        x_velocity=jnp.zeros((n, query_len), jnp.float32),
        qpos=jnp.asarray(take("infos/qpos", 0), jnp.float32),
        qvel=jnp.asarray(take("infos/qvel", 0), jnp.float32),
        source=jnp.asarray(np.stack([np.zeros(n, np.int64), starts], 1), jnp.int32),
    )
    q = labels.size
    ours = np.array([UNIRLHF_TO_OURS[int(v)] for v in labels], np.float32)
    return PreferenceDataset(segments=segments, first=jnp.asarray(inverse[:q], jnp.int32),
                             second=jnp.asarray(inverse[q:], jnp.int32),
                             labels={label_name: jnp.asarray(ours)},
                             label_mask={label_name: jnp.ones((q,), bool)})


# --------------------------------------------------------------------------- imitation


def to_imitation_arrays(dataset: PreferenceDataset, label_name: str) -> dict[str, np.ndarray]:
    """imitation's fragment pairs as stacked arrays (skipped queries left out)."""
    if label_name not in dataset.labels:
        raise KeyError(f"no labels named {label_name!r}; have {sorted(dataset.labels)}")
    keep = np.asarray(dataset.label_mask[label_name], bool)
    seg = dataset.segments
    obs = np.concatenate([np.asarray(seg.obs), np.asarray(seg.final_obs)[:, None]], axis=1)
    out = {"preferences": np.asarray(dataset.labels[label_name], np.float32)[keep]}
    for side, idx in (("fragments1", dataset.first), ("fragments2", dataset.second)):
        idx = np.asarray(idx)[keep]
        out[f"{side}_obs"] = obs[idx]
        out[f"{side}_acts"] = np.asarray(seg.action)[idx]
        out[f"{side}_rews"] = np.asarray(seg.reward)[idx]
    return out


def export_imitation(path: str | os.PathLike, dataset: PreferenceDataset, label_name: str) -> Path:
    """Write :func:`to_imitation_arrays` as an ``.npz`` (atomically)."""
    buf = io.BytesIO()
    np.savez(buf, **to_imitation_arrays(dataset, label_name))
    return atomic_write_bytes(path, buf.getvalue())


def from_imitation_arrays(arrays: Mapping[str, np.ndarray], where: str = "imitation file",
                          label_name: str = "preference") -> PreferenceDataset:
    """A :class:`PreferenceDataset` from stacked imitation fragments (pairs ``2q``, ``2q + 1``).

    Preferences must be 0, ½ or 1 (a dataset label); ``qpos``/``qvel`` are not
    in the format (``nq = nv = 0``).
    """
    need = [f"{s}_{f}" for s in ("fragments1", "fragments2") for f in ("obs", "acts", "rews")]
    missing = [k for k in [*need, "preferences"] if k not in arrays]
    if missing:
        raise FileFormatError(f"{where}: missing array(s) {missing}")
    a = {k: np.asarray(arrays[k]) for k in [*need, "preferences"]}
    q, rows = a["fragments1_obs"].shape[:2]
    k = rows - 1
    for key in need:
        lead = (q, rows) if key.endswith("obs") else (q, k)
        if a[key].shape[:2] != lead or not np.all(np.isfinite(a[key])):
            raise FileFormatError(f"{where}: {key} must be finite with leading shape {lead}, "
                                  f"got {a[key].shape}")
    pref = a["preferences"].astype(np.float32)
    if pref.shape != (q,) or not np.all(np.isin(pref, (0.0, 0.5, 1.0))):
        raise FileFormatError(f"{where}: preferences must be [{q}] values in {{0, 0.5, 1}}")

    def pool(key: str) -> np.ndarray:
        both = np.stack([a[f"fragments1_{key}"], a[f"fragments2_{key}"]], axis=1)
        return both.reshape((2 * q,) + both.shape[2:]).astype(np.float32)

    obs, n = pool("obs"), 2 * q
    segments = Segments(
        obs=jnp.asarray(obs[:, :-1]), action=jnp.asarray(pool("acts")),
        reward=jnp.asarray(pool("rews")), next_obs=jnp.asarray(obs[:, 1:]),
        mask=jnp.ones((n, k), jnp.float32), x_velocity=jnp.zeros((n, k), jnp.float32),
        qpos=jnp.zeros((n, k, 0), jnp.float32), qvel=jnp.zeros((n, k, 0), jnp.float32),
        source=jnp.asarray(np.stack([np.repeat(np.arange(q), 2), np.tile([0, 1], q)], 1)))
    return PreferenceDataset(segments=segments, first=jnp.arange(0, n, 2, dtype=jnp.int32),
                             second=jnp.arange(1, n, 2, dtype=jnp.int32),
                             labels={label_name: jnp.asarray(pref)},
                             label_mask={label_name: jnp.ones((q,), bool)})


def import_imitation(path: str | os.PathLike, label_name: str = "preference") -> PreferenceDataset:
    return from_imitation_arrays(read_npz_arrays(path), str(path), label_name)


def to_imitation(arrays: Mapping[str, np.ndarray]) -> Any:
    """imitation's own ``PreferenceDataset`` from :func:`to_imitation_arrays` (needs imitation)."""
    from imitation.algorithms.preference_comparisons import PreferenceDataset as ImDataset
    from imitation.data.types import TrajectoryWithRew

    def fragment(side: str, i: int) -> Any:
        return TrajectoryWithRew(obs=arrays[f"{side}_obs"][i], acts=arrays[f"{side}_acts"][i],
                                 infos=None, terminal=False, rews=arrays[f"{side}_rews"][i])

    out = ImDataset()
    pairs = [(fragment("fragments1", i), fragment("fragments2", i))
             for i in range(len(arrays["preferences"]))]
    out.push(pairs, np.asarray(arrays["preferences"], np.float32))
    return out
