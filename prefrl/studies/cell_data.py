"""A sweep cell's data: its segment pool, held-out queries and oracle, and the seeds' queries.

Every cell draws its training queries uniformly from a fixed ~80 % of the
dataset's segments and labels them with its oracle (β, ε); the other
segments form held-out queries labelled without noise by every oracle (the
regret one needs the task's expert). Seed s of a cell uses ``PRNGKey(s)``:
same cell and seed → same queries, labels and numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

from prefrl.sweeps.spec import LABEL_MODELS, CellConfig, Settings, SweepError

OBS_DIM = 17  # half-cheetah (prefrl.envs.OBS_DIM); checked against the dataset
ACT_DIM = 6
_HELDOUT_KEY = 0  # fixed: every cell and seed is scored on the same held-out queries


@dataclasses.dataclass(frozen=True)
class CellData:
    """Seed-independent inputs of a cell (host side).

    ``segments`` is the dataset's pool cut to the cell's segment length
    ``[N, k, …]``; ``train_idx``/``heldout_idx`` split it (fixed permutation,
    so the held-out segments never appear in a training query);
    ``heldout_first``/``heldout_second`` ``[H]`` index held-out queries into
    ``segments``, labelled without noise by every oracle available
    (``heldout_labels``: model → ``[H]``; ``regret`` only with an expert).
    ``rational``/``preference`` ``[N]`` are the cell's oracle's scores.
    """

    segments: Any
    train_idx: Any
    heldout_idx: Any
    heldout_first: Any
    heldout_second: Any
    heldout_labels: dict[str, Any]
    oracle: Any
    rational: Any
    preference: Any
    value_fn: Any


def oracle_discount(model: str, settings: Settings) -> float:
    # Partial return is the undiscounted sum (γ_p = 1, Christiano 2017); the
    # regret score uses V_E's own γ (docs/design.md §3).
    return 1.0 if model == "partial_return" else settings.discount


def slice_segments(segments: Any, length: int) -> Any:
    """The first ``length`` steps of every segment (``s_length`` = ``next_obs[:, length − 1]``)."""
    k = segments.obs.shape[1]
    if not 1 <= length <= k:
        raise SweepError(f"segment length {length} is not in [1, {k}] (the dataset's length)")
    if length == k:
        return segments
    changes = {
        f.name: getattr(segments, f.name)[:, :length]
        for f in dataclasses.fields(segments)
        if f.name != "source"
    }
    return segments.replace(**changes)


def load_value_fn(path: str) -> Callable[[Any], Any]:
    """``V_E(obs [..., obs]) -> [...]`` of the expert file ``path`` (true-reward units)."""
    from prefrl import checkpoints

    return checkpoints.load_value_fn(path, obs_dim=OBS_DIM)


def load_cell_data(cell: CellConfig) -> CellData:
    """Load and prepare the cell's segment pool, held-out queries and oracle scores."""
    import jax
    import numpy as np

    from prefrl import oracles
    from prefrl.data import dataset as dataset_lib
    from prefrl.data import pairs, queries

    settings = cell.settings
    ds, _ = dataset_lib.load(cell.files.dataset)
    pool = slice_segments(ds.segments, cell.segment_length)
    n, _, obs_dim = pool.obs.shape
    if obs_dim != OBS_DIM or pool.action.shape[-1] != ACT_DIM:
        raise SweepError(
            f"{cell.files.dataset}: segments have obs/act dims {obs_dim}/{pool.action.shape[-1]}, "
            f"the half-cheetah tasks have {OBS_DIM}/{ACT_DIM}"
        )
    try:
        parts = pairs.split(n, {"heldout": settings.heldout_fraction}, _HELDOUT_KEY,
                            min_rest=2)
    except ValueError:
        parts = {"heldout": ()}
    heldout_idx, train_idx = parts["heldout"], parts.get("train")
    if len(heldout_idx) < 2:
        raise SweepError(
            f"{cell.files.dataset}: {n} segments are too few to hold out "
            f"{settings.heldout_fraction:g} of them (need >= 2 on each side)"
        )
    n_held = len(heldout_idx)
    value_fn = load_value_fn(cell.files.expert) if cell.files.expert else None

    i, j = queries.uniform_pairs(jax.random.PRNGKey(_HELDOUT_KEY), n_held, settings.heldout_queries)
    h_first, h_second = heldout_idx[np.asarray(i)], heldout_idx[np.asarray(j)]
    heldout_labels = {}
    for model in LABEL_MODELS:
        if model == "regret" and value_fn is None:
            continue
        rational_oracle = oracles.OracleConfig(
            model=model, discount=oracle_discount(model, settings)
        )
        labels = oracles.label_queries(
            rational_oracle, jax.random.PRNGKey(_HELDOUT_KEY), pool, h_first, h_second, value_fn
        )
        heldout_labels[model] = np.asarray(labels.label)
    oracle = oracles.OracleConfig(
        model=cell.label_model,
        discount=oracle_discount(cell.label_model, settings),
        temperature=cell.beta,
        temperature_mode=settings.beta_mode,
        mistake_prob=cell.epsilon,
    )
    rational, pref = oracles.pool_scores(oracle, pool, value_fn)
    return CellData(
        segments=pool, train_idx=train_idx, heldout_idx=heldout_idx, heldout_first=h_first,
        heldout_second=h_second, heldout_labels=heldout_labels, oracle=oracle,
        rational=np.asarray(rational), preference=np.asarray(pref), value_fn=value_fn,
    )


@functools.lru_cache(maxsize=32)
def _pair_indices_fn(oracle: Any, budget: int, num_train: int) -> Callable[..., Any]:
    import jax

    from prefrl import oracles
    from prefrl.data import queries

    def one(key, train_idx, rational, pref):  # noqa: ANN001, ANN202
        key_pairs, key_labels = jax.random.split(key)
        i, j = queries.uniform_pairs(key_pairs, num_train, budget)
        first, second = train_idx[i], train_idx[j]
        labels = oracles.label_scores(
            oracle, key_labels, rational[first], rational[second], pref[first], pref[second]
        )
        return first, second, labels.label

    return jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))


def pair_indices(data: CellData, budget: int, keys: Any) -> tuple[Any, Any, Any]:
    """``(first, second, label)`` ``[S, budget]``: every seed's labelled training queries.

    Seed s draws ``budget`` uniform ordered pairs of distinct *training*
    segments with ``keys[s]`` (indices into ``data.segments``) and labels them
    with the cell's oracle (β, ε) from the precomputed scores, in one jitted,
    seed-vmapped call cached per (oracle, budget, pool size).
    """
    import jax
    import jax.numpy as jnp

    from prefrl import preflight

    # Checked before allocating: the gathered pairs (sample_pairs) hold two
    # segments per query and seed.
    segment_bytes = sum(x.dtype.itemsize * math.prod(x.shape[1:])
                        for x in jax.tree.leaves(data.segments))
    preflight.check_memory("label_budget", int(budget),
                           int(keys.shape[0]) * int(budget) * (2 * segment_bytes + 16))
    fn = _pair_indices_fn(data.oracle, int(budget), int(data.train_idx.shape[0]))
    first, second, label = fn(keys, jnp.asarray(data.train_idx), jnp.asarray(data.rational),
                              jnp.asarray(data.preference))
    return first.astype(jnp.int32), second.astype(jnp.int32), label.astype(jnp.float32)


def sample_pairs(data: CellData, budget: int, keys: Any) -> Any:
    """Labelled training queries of every seed: a reward-model ``PairBatch`` ``[S, budget, …]``.

    Seed s draws ``budget`` uniform pairs of *training* segments with
    ``keys[s]`` and labels them with the cell's oracle (β, ε) from the
    precomputed scores (:func:`pair_indices`). Same key → same queries and labels.
    """
    from prefrl.data import pairs

    first, second, label = pair_indices(data, budget, keys)
    return pairs.gather(data.segments, first, second, label)


def seed_keys(seeds: Sequence[int]) -> Any:
    import jax
    import jax.numpy as jnp

    return jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])


def heldout_accuracy(data: CellData, scores: Any) -> dict[str, float]:
    """Accuracy of ``score(σ¹) > score(σ²)`` against each oracle's noiseless held-out labels.

    ``scores`` is ``[N]`` (one per pool segment);
    :func:`prefrl.evaluation.preference_accuracy` (tie labels left out, a tie
    in the scores earns ½; 0.5 when every label is a tie).
    ``heldout_accuracy`` is the one under the cell's own label model.
    """
    import math

    import numpy as np

    from prefrl import evaluation

    scores = np.asarray(scores, np.float64)
    accuracy = evaluation.preference_accuracies(
        scores[data.heldout_first], scores[data.heldout_second], data.heldout_labels)
    out = {f"heldout_accuracy_{model}": acc if math.isfinite(acc) else 0.5
           for model, acc in accuracy.items()}
    own = f"heldout_accuracy_{data.oracle.model}"
    if own in out:
        out["heldout_accuracy"] = out[own]
    return out


def correlations(learned: Any, target: Any, name: str) -> dict[str, float]:
    import numpy as np
    import scipy.stats

    x, y = np.asarray(learned, np.float64).ravel(), np.asarray(target, np.float64).ravel()
    if x.std() == 0 or y.std() == 0:
        return {f"reward_pearson_{name}": float("nan"), f"reward_spearman_{name}": float("nan")}
    return {
        f"reward_pearson_{name}": float(np.corrcoef(x, y)[0, 1]),
        f"reward_spearman_{name}": float(scipy.stats.spearmanr(x, y).statistic),
    }


def expert_advantages(data: CellData, discount: float) -> Any:
    """``[N, k]`` A_E = r + γ V_E(s') − V_E(s) of every pool step (needs the expert)."""
    import numpy as np

    seg = data.segments
    v = np.asarray(data.value_fn(seg.obs))
    v_next = np.asarray(data.value_fn(seg.next_obs))
    return np.asarray(seg.reward) + discount * v_next - v
