"""Old name of :mod:`prefrl.loops.ppo` (PPO's training loop), kept for code written against it."""

from prefrl.loops.ppo import (  # noqa: F401
    TrainConfig,
    TrainResult,
    load_reference,
    rlhf_kwargs,
    train,
)
