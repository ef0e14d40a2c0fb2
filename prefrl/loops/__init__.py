"""Host loops around the jitted learners: PPO, offline learning, reward fits, online RLHF."""
