"""Host loops around the jitted learners (docs/design.md §7).

- :mod:`prefrl.loops.fit` — reward-model fitting: a whole fit as one ``lax.scan``
  (sampling, bootstrap weights, early stopping by validation loss);
- :mod:`prefrl.loops.offline` — BC, CPL, CPL-BC and contrastive DPO from a
  preference dataset, seeds vmapped;
- :mod:`prefrl.loops.ppo` — PPO from batched CPU rollouts (true or learned reward,
  KL to π_ref), checkpoints and resume;
- :mod:`prefrl.loops.online` — online preference-based RL (Christiano et al. 2017):
  one core (pure buffers, one state, one round) for the C-engine and MJX backends,
  with registries of online reward learners and policy learners;
- :mod:`prefrl.loops.schedule` — label schedules with an exact budget;
- :mod:`prefrl.loops.active` — active query selection in rounds.
"""
