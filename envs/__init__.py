"""Half-cheetah tasks (installed as ``prefrl.envs``)."""
