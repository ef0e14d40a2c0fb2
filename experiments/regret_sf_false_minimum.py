"""How often hard-max GPI stops at a false minimum of ``regret_sf``'s loss, and annealing's fix.

Random deterministic MDPs (``prefrl.tabular.random_mdp``, seeds 0 … N−1) with 3 states
and 2 actions, γ = 0.9, Π = every deterministic policy (GPI exact), ψ by the linear solve,
every segment of length k and all pairs with exact soft regret labels (β = 1). The labels
are realisable, so the optimal BT loss is their entropy; a fit whose final loss is more
than 1e-3 above it counts as stuck. All MDPs of one setting are fitted in one vmapped
compile (docs/design.md §4, "The loss is not convex in w").

    python experiments/regret_sf_false_minimum.py --length 3 --steps 300 --anneal 0
    python experiments/regret_sf_false_minimum.py --length 3 --steps 300 --anneal 150
"""

from __future__ import annotations

import argparse
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from prefrl import tabular
from prefrl.learners import regret_sf as rs

GAMMA, S, A = 0.9, 3, 2


def world(seed: int, length: int) -> tuple[rs.SFSegments, np.ndarray]:
    """The pool of every length-k segment with ψ values, and each segment's exact regret."""
    transitions, rewards = tabular.random_mdp(seed, S, A)
    v, _ = tabular.value_iteration(transitions, rewards, discount=GAMMA, tol=1e-13)
    v = np.asarray(v, np.float64)
    library = tabular.deterministic_policies(S, A)
    feats = tabular.one_hot_features(S, A)
    psi = np.stack([tabular.successor_features(transitions, p, feats, discount=GAMMA)
                    for p in library])  # [Π, S, d]
    actions = np.array([a for _ in range(S) for a in itertools.product(range(A), repeat=length)])
    states = [np.repeat(np.arange(S), A**length)]
    for t in range(length):
        states.append(transitions[states[-1], actions[:, t]])
    states = np.stack(states, axis=1)  # [N, k + 1]
    ret = rewards[states[:, :-1], actions] @ GAMMA ** np.arange(length)
    regret = v[states[:, 0]] - (ret + GAMMA**length * v[states[:, -1]])
    psi_in = np.stack([psi[:, states[:, 0]], psi[:, states[:, -1]]]).transpose(2, 0, 1, 3)
    pool = rs.SFSegments(obs=jnp.asarray(np.eye(S)[states[:, :-1]]),
                         action=jnp.asarray(np.eye(A)[actions]),
                         mask=jnp.ones(actions.shape), psi_in=jnp.asarray(psi_in))
    return pool, regret


def one_hot_phi(obs: jax.Array, action: jax.Array) -> jax.Array:
    return jnp.einsum("...s,...a->...sa", obs, action).reshape(*obs.shape[:-1], -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--anneal", type=int, default=0, help="gpi_anneal_steps (0: hard max)")
    parser.add_argument("--mdps", type=int, default=40)
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    pools, regrets, batches = [], [], []
    for seed in range(args.mdps):
        pool, regret = world(seed, args.length)
        first, second = np.triu_indices(regret.shape[0], 1)
        label = 1.0 / (1.0 + np.exp(regret[first] - regret[second]))  # sigmoid(r² − r¹)
        pools.append(pool)
        regrets.append(regret)
        batches.append(rs.pair_batch(pool, first, second, label))
    stack = lambda xs: jax.tree.map(lambda *x: jnp.stack(x), *xs)
    pool, batch = stack(pools), stack(batches)
    p = np.clip(np.asarray(batch.label), 1e-15, 1 - 1e-15)
    entropy = np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p)), axis=-1)
    cfg = rs.RegretSFConfig(discount=GAMMA, learning_rate=args.learning_rate,
                            gpi_anneal_steps=args.anneal)
    learner = rs.make(cfg, one_hot_phi)
    regret_fn = rs.make_regret_fn(cfg, one_hot_phi)

    def fit(key: jax.Array, b: rs.SFPairBatch, pl: rs.SFSegments) -> tuple[jax.Array, ...]:
        state = learner.init(key, b)
        state, m = jax.lax.scan(lambda s, _: learner.update(s, b), state, None,
                                length=args.steps)
        return m["loss"][-1], regret_fn(state, pl)

    fit_all = jax.jit(jax.vmap(fit, in_axes=(None, 0, 0)))
    for key in range(args.keys):
        loss, fitted = fit_all(jax.random.key(key), batch, pool)
        gap = np.asarray(loss) - entropy
        stuck = np.flatnonzero(gap > 1e-3)
        print(f"key {key}: {stuck.size} of {args.mdps} stuck (loss > label entropy + 1e-3)")
        for i in stuck:
            got = np.asarray(fitted[i])
            print(f"  mdp {i}: gap {gap[i]:.3f}, Pearson {np.corrcoef(got, regrets[i])[0, 1]:.2f}, "
                  f"slope {np.polyfit(regrets[i], got, 1)[0]:.3f}")


if __name__ == "__main__":
    main()
