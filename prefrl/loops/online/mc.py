"""The Monte-Carlo regret oracle as the online core's host labeller (``oracle_value="mc"``).

Training labels come from :class:`prefrl.oracles_mc.MCLabeller`: V(s_0) and
V(s_k) of each queried segment from M rollouts of the stochastic expert, H
steps each, plus γ^H·V_E (labels exact for A^{π_E} up to the tail and the MC
noise; docs/design.md §4b). Only the round's n queries are rolled out, each
distinct endpoint once. Cost: about M·H env steps per distinct endpoint, on
top of the run's own (M = 16, H = 200: 3 200 per endpoint, so 1 000 labels
cost up to ~13 M oracle env steps against a 1 M-step run).

Held-out accuracy of each round keeps the cheap rational oracles on all
``heldout_queries`` fresh queries: ``partial_return`` (true reward) and
``regret`` (the expert's critic V_E). The MC oracle (``regret_mc``) labels
only the first ``mc_heldout_queries`` of them, and only every
``mc_heldout_every``-th round (the round is read from the pool's tags, so a
resumed run picks the same rounds); the others count as unlabelled (ties,
excluded from the accuracy). With the defaults (16 queries every 4 rounds)
held-out MC labels cost ~1/8 of 1 000 training labels, instead of several
times their cost. Each round record logs the oracle's env steps since the
last record: ``oracle_env_steps`` (training labels),
``oracle_heldout_env_steps`` and ``oracle_seconds``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prefrl import oracles
from prefrl import oracles_mc as omc
from prefrl.loops.online.config import OnlineConfig
from prefrl.loops.online.core import Labeller

Array = jax.Array


def mc_labeller(config: OnlineConfig, oracle: oracles.OracleConfig, task: Any, *,
                expert: omc.MCExpert | None = None, num_threads: int | None = None
                ) -> Labeller:
    """A host :class:`~prefrl.loops.online.core.Labeller` of MC regret labels.

    ``oracle``: the regret oracle (β, ε, …; its γ must be the expert's).
    ``expert``: a loaded :class:`~prefrl.oracles_mc.MCExpert` (default: load
    ``config.expert``; raises before any work on a missing file, another task
    or γ). Call the labeller's ``close()`` when done.
    """
    if oracle.model != "regret":
        raise ValueError("oracle_value='mc' gives the regret oracle its V: set the oracle's "
                         f"model to regret (--oracle-model regret), got {oracle.model!r}")
    mc = omc.MCConfig(expert=config.expert or "<given expert>", rollouts=config.mc_rollouts,
                      horizon=config.mc_horizon)
    host = omc.MCLabeller(oracle, mc, task, expert=expert, num_threads=num_threads)
    spent = {"oracle_env_steps": 0, "oracle_heldout_env_steps": 0, "oracle_seconds": 0.0}
    rational_regret = oracles.OracleConfig(model="regret", discount=host.expert.discount)

    def label(key: Array, pool: Any, first: np.ndarray, second: np.ndarray) -> oracles.Labels:
        steps, seconds = host.env_steps, host.seconds
        out = host.label(key, pool, first, second)
        spent["oracle_env_steps"] += host.env_steps - steps
        spent["oracle_seconds"] += host.seconds - seconds
        return out

    def heldout(key: Array, pool: Any, first: np.ndarray, second: np.ndarray
                ) -> dict[str, oracles.Labels]:
        out = {
            "partial_return": oracles.label_traced(
                oracles.OracleConfig(), jax.random.fold_in(key, 0), pool, first, second),
            "regret": oracles.label_traced(rational_regret, jax.random.fold_in(key, 1), pool,
                                           first, second, host.expert.value_fn)}
        q = min(config.mc_heldout_queries, len(first))
        update = int(np.asarray(pool.tag)[int(first[0])]) if len(first) else 1
        if q and ((update - 1) // config.refit_every) % config.mc_heldout_every == 0:
            rational, info = omc.label_queries_mc(
                rational_regret, mc, host.expert, jax.random.fold_in(key, 2), pool,
                first[:q], second[:q], env=host.env)
            spent["oracle_heldout_env_steps"] += info["env_steps"]
            spent["oracle_seconds"] += info["seconds"]
            label_all = np.full(len(first), 0.5, np.float32)  # not MC-labelled: excluded
            label_all[:q] = np.asarray(rational.label)
            out["regret_mc"] = oracles.Labels(jnp.asarray(label_all),
                                              jnp.ones(len(first), bool),
                                              jnp.zeros(len(first)), jnp.zeros(len(first)))
        return out

    def cost() -> dict[str, Any]:
        totals = dict(spent)
        for name in spent:
            spent[name] = type(spent[name])(0)
        return totals

    return Labeller(label=label, heldout=heldout, traced=False, name="mc", cost=cost,
                    close=host.close)


__all__ = ["mc_labeller"]
