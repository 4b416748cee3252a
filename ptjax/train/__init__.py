"""Shared training machinery: state, optimizer, steps, parallelism, checkpoints, metrics."""
