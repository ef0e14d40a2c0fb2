"""Active query selection (prefrl.loops.active): ensemble disagreement and active rounds."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import reward_fits
from reward_fits import FIT_MODEL, TINY_CFG, synth, synthetic_train

from prefrl.loops import active


def test_ensemble_preferences_feed_select_queries():
    from prefrl.data.queries import select_queries

    data, train, _ = synth()
    state = reward_fits.fitted().state
    probs = active.ensemble_preferences(FIT_MODEL, state, train)
    assert probs.shape == (2, 2000) and np.all((probs >= 0) & (probs <= 1))
    segs = type("Pool", (), dict(obs=data.obs, action=data.action, mask=data.mask))
    first, second = data.train
    score_fn = active.pool_score_fn(FIT_MODEL, state, segs, chunk=1000)
    np.testing.assert_allclose(score_fn(first, second), probs, rtol=1e-5, atol=1e-6)
    f, s = select_queries(jax.random.key(1), (first, second), 10, score_fn, "disagreement")
    var = np.var(np.asarray(probs), axis=0)
    chosen = [int(np.flatnonzero((first == a) & (second == b))[0]) for a, b in zip(
        np.asarray(f), np.asarray(s), strict=True)]
    # The 10 chosen queries are the 10 of largest variance across members.
    np.testing.assert_allclose(np.sort(var[chosen]), np.sort(var)[-10:], rtol=1e-6)


@pytest.mark.slow
def test_active_rounds_ask_each_query_once():
    from prefrl.loops.active import active_rounds

    data, _, _ = synthetic_train(num_train=600)
    cfg = TINY_CFG
    segs = type("Pool", (), dict(obs=data.obs, action=data.action, mask=data.mask))
    labels = data.labels["train"]["partial_return"]
    lookup = {(int(a), int(b)): lab for a, b, lab in zip(*data.train, labels, strict=True)}
    label_fn = lambda f, s: np.array([lookup[(int(a), int(b))] for a, b in zip(f, s,
                                                                                 strict=True)])
    out = active_rounds(jax.random.key(0), cfg, segs, data.train, label_fn, rounds=3,
                        per_round=50, method="disagreement")
    assert out.first.shape == (150,) and np.bincount(out.round).tolist() == [50, 50, 50]
    pairs = set(zip(out.first.tolist(), out.second.tolist(), strict=True))
    assert len(pairs) == len({(int(a), int(b)) for a, b in zip(*data.train, strict=True)} & pairs)
    np.testing.assert_array_equal(out.label, label_fn(out.first, out.second))


