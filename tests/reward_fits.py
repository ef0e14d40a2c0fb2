"""One synthetic preference set and one compiled reward-model fit, shared by test files.

Cached per process: tests/test_reward_model.py, test_fit.py and test_active.py
all read the same fit (compiling it is the slow part on CPU).
"""

from __future__ import annotations

import functools

import jax

from prefrl.learners import reward_model as rm
from prefrl.loops import fit as reward_fit
from prefrl.studies import two_by_two as study


def synthetic_train(num_train=2000, seed=0, label="partial_return", length=10):
    cfg = study.StudyConfig(num_segments=1000, num_train=num_train, num_test=200,
                            segment_length=length, seed=seed)
    data = study.synthetic_data(cfg)
    return data, study.pair_batch(data, "train", label), study.pair_batch(data, "test", label)


def fast_fit_config(**kw):
    base = dict(hidden=(64, 64), ensemble_size=2, num_steps=500, batch_size=64,
                learning_rate=3e-3, eval_every=100, chunk_pairs=64)
    base.update(kw)
    return rm.RewardModelConfig(**base)


FIT_CFG = fast_fit_config()
FIT_MODEL = rm.model(FIT_CFG)
FIT = jax.jit(lambda key, train, valid: reward_fit.fit(key, FIT_CFG, train, valid))
TINY_CFG = fast_fit_config(num_steps=10, eval_every=5, hidden=(8,), ensemble_size=3)


@functools.cache
def synth():
    """``(data, train, test)``: 2000 partial-return-labelled synthetic queries."""
    return synthetic_train(num_train=2000)


@functools.cache
def fitted():
    """:data:`FIT` on :func:`synth` with key 0."""
    _, train, test = synth()
    return FIT(jax.random.key(0), train, test)
