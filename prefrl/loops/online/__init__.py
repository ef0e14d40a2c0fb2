"""Online preference-based RL (Christiano et al. 2017): one core, two backends.

- :mod:`~prefrl.loops.online.core`: the pure buffers, :class:`OnlineState` and the round
  (select → label → add → refit → standardise) both backends run;
- :mod:`~prefrl.loops.online.registry`: online reward learners and policy learners
  (query rules: :data:`prefrl.data.queries.ACQUISITIONS`);
- :mod:`~prefrl.loops.online.cpu`: the host loop on the C engine (:func:`train`);
- :mod:`~prefrl.loops.online.mjx`, :mod:`~prefrl.loops.online.mjx_run`: a round in one
  jit on MJX (for GPUs).
"""

from prefrl.loops.online.config import OnlineConfig, default_reward_config
from prefrl.loops.online.core import Labeller, OnlineState, make_core, scripted_labeller
from prefrl.loops.online.cpu import OnlineResult, train
from prefrl.loops.online.registry import (
    POLICY_LEARNERS,
    REWARD_LEARNERS,
    register_policy_learner,
    register_reward_learner,
)

__all__ = [
    "POLICY_LEARNERS", "REWARD_LEARNERS", "Labeller", "OnlineConfig", "OnlineResult",
    "OnlineState", "default_reward_config", "make_core", "register_policy_learner",
    "register_reward_learner", "scripted_labeller", "train",
]
