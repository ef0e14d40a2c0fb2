"""Preference-dataset files: validated, atomic ``.npz`` (schema version 1).

Layout (``prefrl.io.save_npz``; read with ``allow_pickle=False``):

* ``segments.<field>`` — every field of the :class:`~prefrl.types.Segments`
  pool (``obs``, ``action``, ``reward``, ``next_obs``, ``mask``,
  ``x_velocity``, ``qpos``, ``qvel``, ``source``), ``[N, k, …]``;
* ``first``, ``second`` — ``[Q]`` int indices into the pool;
* ``label.<name>`` — ``[Q]`` float P(first ≻ second) ∈ {0, ½, 1} per oracle;
* ``label_mask.<name>`` — ``[Q]`` bool, False where that oracle skipped;
* the JSON header: ``kind = "preference_dataset"``, ``schema_version``,
  ``task``, ``segment_length``, ``num_segments``, ``num_queries``,
  ``labels`` (names), ``oracles`` (name → oracle configuration),
  ``seeds`` (name → seed) and free-form ``meta``;
* schema extensions (optional): ``extensions.<name>`` in the header and arrays
  ``<name>.<…>`` (e.g. the labelling page's ``annotation``:
  ``prefrl.annotate.store``); readers that do not know one ignore it.

:func:`load` checks everything and raises :class:`prefrl.io.FileFormatError`
(a ``ValueError``) naming the file and the problem.

Flat format (:func:`to_flat`, :func:`from_flat`, :func:`export_flat`,
:func:`import_flat`): ``obs_1, obs_2, action_1, action_2, reward_1,
reward_2, label`` arrays ``[Q, k + 1, …]`` / ``[Q]`` as read by CPL
(Hejna et al. 2023, ``research/datasets/feedback_buffer.py``, its "old
format" with ``action_1``) and the Stanford CS234 RLHF/DPO homework
(``prefs-hopper.npz``: ``obs_1, obs_2, action_1, action_2, label``).
**Their label is the opposite of ours**: there ``label = 1`` means the
*second* segment is preferred (CPL: "y = 1 if we prefer x2 to x1"; CS234:
0 first, 1 second, ½ tie), so the converters write ``1 − label`` and read
``label = 1 − theirs``. The flat format has no separate final state: row
``k`` of ``obs_*`` is s_k (CPL's ``S + 1`` rows, whose last action is padding),
so a pool of length k exports ``k + 1`` rows (action and reward of the last
row are zero padding) and an imported file with R rows gives segments of
length ``R − 1``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from prefrl.data import dataset_checks
from prefrl.data.dataset_checks import LABEL_VALUES
from prefrl.io import FileFormatError, atomic_write_bytes, load_npz, save_npz
from prefrl.types import PreferenceDataset, Segments

KIND = "preference_dataset"
SCHEMA_VERSION = 1
SEGMENT_FIELDS = tuple(f.name for f in dataclasses.fields(Segments))


# Validation shared by save, load and a sweep's pre-check: prefrl.data.dataset_checks.
_check = dataset_checks.check_arrays
_check_meaning = dataset_checks.check_meaning
assert SEGMENT_FIELDS == dataset_checks.SEGMENT_FIELDS


def _to_arrays(dataset: PreferenceDataset) -> dict[str, np.ndarray]:
    if set(dataset.labels) != set(dataset.label_mask):
        raise ValueError(
            f"labels {sorted(dataset.labels)} and label_mask {sorted(dataset.label_mask)} "
            "must have the same names"
        )
    arrays = {f"segments.{f}": np.asarray(getattr(dataset.segments, f)) for f in SEGMENT_FIELDS}
    arrays["first"] = np.asarray(dataset.first)
    arrays["second"] = np.asarray(dataset.second)
    for name in dataset.labels:
        if not name or "." in name:
            raise ValueError(f"label name {name!r} must be non-empty and contain no '.'")
        arrays[f"label.{name}"] = np.asarray(dataset.labels[name])
        arrays[f"label_mask.{name}"] = np.asarray(dataset.label_mask[name]).astype(bool)
    return arrays


# ---------------------------------------------------------------------------
# Native format.


def save(
    path: str | os.PathLike,
    dataset: PreferenceDataset,
    *,
    task: str,
    oracles: Mapping[str, Mapping[str, Any]] | None = None,
    seeds: Mapping[str, int] | None = None,
    meta: Mapping[str, Any] | None = None,
    extensions: Mapping[str, tuple[Mapping[str, Any], Mapping[str, np.ndarray]]] | None = None,
) -> Path:
    """Validate and write ``dataset`` atomically; returns the path.

    Args:
      task: the task whose reward labelled the data (e.g. ``"run"``).
      oracles: label name → oracle configuration (``prefrl.config.to_dict``).
      seeds: label name (or ``"queries"``) → seed used.
      meta: any other JSON-able provenance (trajectory file, expert, …).
      extensions: schema extensions, name → ``(header, arrays)``: the header
        goes under ``header["extensions"][name]`` and each array is stored as
        ``<name>.<array>`` (e.g. ``annotation.annotator.human``, the labelling
        page's, ``prefrl.annotate.store``); readers that do not know an
        extension ignore it, and the base schema is checked as usual.
    """
    arrays = _to_arrays(dataset)
    base = set(arrays)
    for ext, (_, ext_arrays) in (extensions or {}).items():
        if not ext or "." in ext or ext in ("segments", "label", "label_mask", "first", "second"):
            raise ValueError(f"extension name {ext!r} must be non-empty, contain no '.' and not "
                             "be a base array name")
        for key, value in ext_arrays.items():
            arrays[f"{ext}.{key}"] = np.asarray(value)
    names = sorted(dataset.labels)
    _check(str(path), arrays, names)
    header = {
        "kind": KIND,
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "segment_length": int(dataset.segments.obs.shape[1]),
        "num_segments": int(dataset.segments.obs.shape[0]),
        "num_queries": int(dataset.first.shape[0]),
        "labels": names,
        "oracles": {k: dict(v) for k, v in (oracles or {}).items()},
        "seeds": {k: int(v) for k, v in (seeds or {}).items()},
        "meta": dict(meta or {}),
    }
    if extensions:
        header["extensions"] = {k: dict(h) for k, (h, _) in extensions.items()}
    _check_meaning(str(path), {k: v for k, v in arrays.items() if k in base}, header)
    return save_npz(path, arrays, header)


def load(path: str | os.PathLike) -> tuple[PreferenceDataset, dict[str, Any]]:
    """Read and validate a dataset file; returns ``(dataset, header)``.

    Raises ``FileNotFoundError`` or :class:`prefrl.io.FileFormatError` for a
    truncated or non-npz file, an unknown schema version, missing arrays,
    shape mismatches, NaN/inf, labels outside {0, ½, 1}, out-of-range
    segment indices, or arrays that disagree with the header or its task
    (:func:`_check_meaning`).
    """
    required = tuple(f"segments.{f}" for f in SEGMENT_FIELDS) + ("first", "second")
    arrays, header = load_npz(
        path, kind=KIND, supported_versions=(SCHEMA_VERSION,), required=required
    )
    names = header.get("labels")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise FileFormatError(f"{path}: header 'labels' must be a list of names, got {names!r}")
    _check(str(path), arrays, names)
    _check_meaning(str(path), arrays, header)
    segments = Segments(**{f: jnp.asarray(arrays[f"segments.{f}"]) for f in SEGMENT_FIELDS})
    dataset = PreferenceDataset(
        segments=segments,
        first=jnp.asarray(arrays["first"]),
        second=jnp.asarray(arrays["second"]),
        labels={n: jnp.asarray(arrays[f"label.{n}"]) for n in names},
        label_mask={n: jnp.asarray(arrays[f"label_mask.{n}"]) for n in names},
    )
    return dataset, header


# ---------------------------------------------------------------------------
# Flat format (CPL / CS234): label = 1 means the SECOND segment is preferred.


def to_flat(dataset: PreferenceDataset, label_name: str) -> dict[str, np.ndarray]:
    """Flat arrays in CPL/CS234 layout for one oracle's labels (skipped queries dropped).

    Returns ``obs_1, obs_2 [Q, k + 1, obs]`` (rows 0…k are s_0…s_k),
    ``action_1, action_2 [Q, k + 1, act]`` and ``reward_1, reward_2 [Q, k + 1]``
    (last row zero padding) and ``label [Q] = 1 − ours`` (1 = second preferred).
    """
    if label_name not in dataset.labels:
        raise KeyError(f"no labels named {label_name!r}; have {sorted(dataset.labels)}")
    keep = np.asarray(dataset.label_mask[label_name], bool)
    first = np.asarray(dataset.first)[keep]
    second = np.asarray(dataset.second)[keep]
    seg = dataset.segments
    obs = np.concatenate([np.asarray(seg.obs), np.asarray(seg.final_obs)[:, None]], axis=1)
    action = np.asarray(seg.action)
    action = np.concatenate([action, np.zeros_like(action[:, :1])], axis=1)
    reward = np.asarray(seg.reward)
    reward = np.concatenate([reward, np.zeros_like(reward[:, :1])], axis=1)
    ours = np.asarray(dataset.labels[label_name])[keep]
    return {
        "obs_1": obs[first],
        "obs_2": obs[second],
        "action_1": action[first],
        "action_2": action[second],
        "reward_1": reward[first],
        "reward_2": reward[second],
        # Flat convention: 1 = second preferred. Ours: 1 = first preferred.
        "label": (1.0 - ours).astype(np.float32),
    }


def from_flat(arrays: Mapping[str, np.ndarray], where: str = "flat dataset") -> PreferenceDataset:
    """A :class:`PreferenceDataset` from CPL/CS234 flat arrays (label converted to ours).

    Each query's two segments become pool entries ``2q`` and ``2q + 1``.
    Segment length is rows − 1 (the last row gives s_k; its action/reward
    are dropped). Missing ``reward_*`` become zeros; ``x_velocity``,
    ``qpos``, ``qvel`` are not in the format (zeros, ``nq = nv = 0``); the
    pool's ``source`` is ``(q, side)``; the label is stored as ``"label"``.
    """
    required = ("obs_1", "obs_2", "action_1", "action_2", "label")
    missing = [k for k in required if k not in arrays]
    if missing:
        raise FileFormatError(f"{where}: missing array(s) {missing} (flat format needs {required})")
    a = {k: np.asarray(v) for k, v in arrays.items()}
    for base in ("obs", "action", "reward"):
        k1, k2 = f"{base}_1", f"{base}_2"
        if (k1 in a) != (k2 in a):
            raise FileFormatError(f"{where}: {k1} and {k2} must both be present or both absent")
        if k1 in a and a[k1].shape != a[k2].shape:
            raise FileFormatError(f"{where}: {k1} shape {a[k1].shape} != {k2} shape {a[k2].shape}")
    obs1, act1 = a["obs_1"], a["action_1"]
    if obs1.ndim != 3 or act1.ndim != 3:
        raise FileFormatError(
            f"{where}: obs_* and action_* must be [Q, rows, dim], got {obs1.shape}, {act1.shape}"
        )
    q, rows = obs1.shape[:2]
    if act1.shape[:2] != (q, rows):
        raise FileFormatError(
            f"{where}: action_1 leading shape {act1.shape[:2]} != obs_1 leading shape {(q, rows)}"
        )
    if rows < 2:
        raise FileFormatError(
            f"{where}: need at least 2 rows per segment (s_0 and s_k), got {rows}"
        )
    label = a["label"].reshape(-1).astype(np.float32)
    if label.shape != (q,):
        raise FileFormatError(f"{where}: label has {label.shape[0]} entries for {q} queries")
    if "reward_1" in a and a["reward_1"].shape[:2] != (q, rows):
        raise FileFormatError(
            f"{where}: reward_1 shape {a['reward_1'].shape} does not match [{q}, {rows}]"
        )
    for key in ("obs_1", "obs_2", "action_1", "action_2", "reward_1", "reward_2", "label"):
        if key in a and not np.all(np.isfinite(a[key])):
            raise FileFormatError(f"{where}: {key} contains NaN or inf")
    if not np.all(np.isin(label, LABEL_VALUES)):
        bad = float(label[~np.isin(label, LABEL_VALUES)][0])
        raise FileFormatError(f"{where}: label holds {bad:g}; flat labels must be 0, 0.5 or 1")

    def interleave(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
        return np.stack([x1, x2], axis=1).reshape((2 * q,) + x1.shape[1:])

    obs = interleave(a["obs_1"], a["obs_2"]).astype(np.float32)
    action = interleave(a["action_1"], a["action_2"]).astype(np.float32)[:, :-1]
    if "reward_1" in a:
        reward = interleave(a["reward_1"], a["reward_2"]).astype(np.float32)[:, :-1]
        reward = reward.reshape(2 * q, rows - 1)
    else:
        reward = np.zeros((2 * q, rows - 1), np.float32)
    n, k = 2 * q, rows - 1
    segments = Segments(
        obs=jnp.asarray(obs[:, :-1]),
        action=jnp.asarray(action),
        reward=jnp.asarray(reward),
        next_obs=jnp.asarray(obs[:, 1:]),
        mask=jnp.ones((n, k), jnp.float32),
        x_velocity=jnp.zeros((n, k), jnp.float32),
        qpos=jnp.zeros((n, k, 0), jnp.float32),
        qvel=jnp.zeros((n, k, 0), jnp.float32),
        source=jnp.asarray(np.stack([np.repeat(np.arange(q), 2), np.tile([0, 1], q)], 1)),
    )
    return PreferenceDataset(
        segments=segments,
        first=jnp.arange(0, n, 2, dtype=jnp.int32),
        second=jnp.arange(1, n, 2, dtype=jnp.int32),
        # Flat convention: 1 = second preferred. Ours: 1 = first preferred.
        labels={"label": jnp.asarray(1.0 - label)},
        label_mask={"label": jnp.ones((q,), bool)},
    )


def export_flat(path: str | os.PathLike, dataset: PreferenceDataset, label_name: str) -> Path:
    """Write :func:`to_flat` as a plain ``.npz`` (atomically) that CPL/CS234 code reads.

    NOTE: the written ``label`` is 1 when the *second* segment is preferred.
    """
    import io

    buf = io.BytesIO()
    np.savez(buf, **to_flat(dataset, label_name))
    return atomic_write_bytes(path, buf.getvalue())


def import_flat(path: str | os.PathLike) -> PreferenceDataset:
    """Read a CPL/CS234 flat ``.npz`` (label converted: ours = 1 − theirs)."""
    from prefrl.io import read_npz_arrays

    return from_flat(read_npz_arrays(path), where=str(path))
