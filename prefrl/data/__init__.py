"""Data: segmenting trajectories, pairing queries, validated dataset files."""
