"""Labelling a segment pool: queries drawn from it, labelled by every configured oracle.

The one labelling path of the project (``prefrl label``, the demo, the CPL
benchmark): :func:`label_pool` samples ``budget`` queries from a pool
(uniform pairs, or pairs with the same start state) and labels the *same*
queries with each oracle of :mod:`prefrl.oracles`, so one
:class:`prefrl.types.PreferenceDataset` carries both models' labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from prefrl.config import field
from prefrl.data.labelling_checks import check_critic
from prefrl.oracles import MODELS, OracleConfig, label_queries
from prefrl.types import PreferenceDataset, Segments

ValueFn = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    """How queries are drawn from a segment pool and which oracles label them."""

    segment_length: int = field(50, "segment length k (steps)")
    stride: int = field(25, "steps between segment starts within an episode")
    budget: int = field(1000, "number of queries to label")
    seed: int = field(0, "seed for query sampling and labelling")
    oracles: tuple[str, ...] = field(
        ("partial_return",), "oracles that label the same queries: partial_return, regret"
    )
    pairing: Literal["uniform", "same_start"] = field(
        "uniform", "uniform random pairs, or pairs whose start states (qpos, qvel) match"
    )
    start_tol: float = field(1e-6, "tolerance for same_start pairing (max abs difference)")
    discount: float = field(1.0, "γ_p of the partial-return score")
    regret_discount: float = field(0.99, "γ of the regret score; must be the critic's γ")
    temperature: float = field(0.0, "Boltzmann temperature β; 0 = deterministic labels")
    temperature_mode: Literal["absolute", "relative"] = field(
        "absolute", "β in score units, or β · std of the batch's scores"
    )
    mistake_prob: float = field(0.0, "ε: probability of flipping a label")
    equal_threshold: float = field(0.0, "tie when |s¹ − s²| is below this; 0 = off")
    skip_threshold: float | None = field(None, "skip when both scores are below this")
    myopic_discount: float = field(1.0, "γ_m of the myopic teacher; 1 = off")
    prune: bool = field(True, "store only the segments that some query uses")

    def __post_init__(self) -> None:
        if self.segment_length <= 0:
            raise ValueError(f"segment_length must be > 0, got {self.segment_length}")
        if self.stride <= 0:
            raise ValueError(f"stride must be > 0, got {self.stride}")
        if self.budget <= 0:
            raise ValueError(f"budget must be > 0, got {self.budget}")
        if not self.oracles:
            raise ValueError("give at least one oracle (--oracles partial_return regret)")
        unknown = [o for o in self.oracles if o not in MODELS]
        if unknown:
            raise ValueError(f"unknown oracle(s) {unknown}; choose from {list(MODELS)}")
        if len(set(self.oracles)) != len(self.oracles):
            raise ValueError(f"oracles listed twice: {list(self.oracles)}")
        if self.start_tol < 0:
            raise ValueError(f"start_tol must be >= 0, got {self.start_tol}")
        for name in self.oracles:  # validates the shared oracle options early
            self.oracle(name)

    def oracle(self, name: str) -> OracleConfig:
        """The oracle config for one model, sharing the irrationality options."""
        return OracleConfig(
            model=name,  # type: ignore[arg-type]
            discount=self.regret_discount if name == "regret" else self.discount,
            temperature=self.temperature,
            temperature_mode=self.temperature_mode,
            mistake_prob=self.mistake_prob,
            equal_threshold=self.equal_threshold,
            skip_threshold=self.skip_threshold,
            myopic_discount=self.myopic_discount,
        )


def _choose_pairs(config: LabelConfig, key: jax.Array, pool: Segments) -> tuple[Any, Any]:
    from prefrl.data import queries

    n = int(pool.obs.shape[0])
    if config.pairing == "uniform":
        return queries.uniform_pairs(key, n, config.budget)
    states = queries.start_states(pool.qpos, pool.qvel)
    return queries.same_start_pairs(key, states, config.budget, config.start_tol)


def _prune(pool: Segments, first: np.ndarray, second: np.ndarray):
    used = np.unique(np.concatenate([first, second]))
    remap = np.full(int(pool.obs.shape[0]), -1, np.int64)
    remap[used] = np.arange(len(used))
    pruned = jax.tree_util.tree_map(lambda x: np.asarray(x)[used], pool)
    return pruned, remap[first], remap[second]


def check_budget(config: LabelConfig, pool: Segments, option: str = "--budget") -> None:
    """Refuse a budget beyond the pool's distinct pairs or the machine's memory.

    ``N`` segments form ``N (N − 1) / 2`` distinct unordered pairs; asking for
    more only repeats queries. Labelling gathers both segments of every
    query, so it needs about ``budget × 2 × (bytes of one segment)``.

    Raises:
      prefrl.config.ConfigError: naming ``option`` (a usage error).
    """
    from prefrl import preflight
    from prefrl.config import ConfigError

    segment_bytes = sum(
        np.dtype(x.dtype).itemsize * int(np.prod(x.shape[1:])) for x in jax.tree.leaves(pool))
    preflight.check_memory(option, config.budget, config.budget * (2 * segment_bytes + 64))
    n = int(pool.obs.shape[0])
    distinct = n * (n - 1) // 2
    if config.pairing == "uniform" and config.budget > distinct:
        raise ConfigError(
            f"{option} {config.budget} exceeds the {distinct} distinct pairs of the {n} "
            f"segments (length {config.segment_length}, stride {config.stride}); lower "
            f"{option} or label a longer trajectory")


def label_pool(
    config: LabelConfig, pool: Segments, value_fn: ValueFn | None = None,
    budget_option: str = "--budget",
    labellers: Mapping[str, Callable[..., Any]] | None = None,
) -> tuple[PreferenceDataset, dict[str, Any]]:
    """Sample queries from ``pool`` and label them with every configured oracle.

    Keys: ``PRNGKey(seed)`` splits into a query key and a label key; oracle
    number i (in ``config.oracles`` order) uses ``fold_in(label_key, i)``.

    The budget is checked first (:func:`check_budget`; ``budget_option`` is
    the name its error gives the budget).

    ``labellers`` maps an oracle's name to a host labeller
    ``label(key, pool, first, second) -> oracles.Labels`` that replaces
    :func:`prefrl.oracles.label_queries` for it (e.g. the Monte-Carlo regret
    oracle, :class:`prefrl.oracles_mc.MCLabeller`); it gets the same key.

    Returns:
      ``(dataset, stats)``; stats per oracle: fraction first preferred, ties,
      skipped.
    """
    labellers = dict(labellers or {})
    if "regret" in config.oracles and value_fn is None and "regret" not in labellers:
        raise ValueError("the regret oracle needs an expert critic V_E (value_fn; "
                         "prefrl label: --expert PATH)")
    if int(pool.obs.shape[0]) < 2:
        raise ValueError(
            f"the trajectory yields {int(pool.obs.shape[0])} segment(s) of length "
            f"{config.segment_length}; need at least 2"
        )
    check_budget(config, pool, budget_option)
    key_queries, key_labels = jax.random.split(jax.random.PRNGKey(config.seed))
    first, second = _choose_pairs(config, key_queries, pool)
    first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
    if config.prune:
        pool, first, second = _prune(pool, first, second)
    jpool = jax.tree_util.tree_map(jnp.asarray, pool)
    labels, masks, stats = {}, {}, {}
    for i, name in enumerate(config.oracles):
        if name in labellers:
            out = labellers[name](jax.random.fold_in(key_labels, i), pool, first, second)
        else:
            out = label_queries(
                config.oracle(name), jax.random.fold_in(key_labels, i), jpool, first, second,
                value_fn if name == "regret" else None,
            )
        label, keep = np.asarray(out.label, np.float32), np.asarray(out.keep, bool)
        labels[name], masks[name] = label, keep
        kept = label[keep]
        stats[name] = {
            "first_preferred": float(np.mean(kept == 1.0)) if kept.size else 0.0,
            "ties": float(np.mean(kept == 0.5)) if kept.size else 0.0,
            "skipped": float(np.mean(~keep)),
        }
    dataset = PreferenceDataset(
        segments=pool,
        first=first.astype(np.int32),
        second=second.astype(np.int32),
        labels=labels,
        label_mask=masks,
    )
    return dataset, stats


__all__ = ["LabelConfig", "check_budget", "check_critic", "label_pool"]
