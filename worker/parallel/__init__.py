"""Tensor parallelism: one worker is a group of rank processes that act as one model."""
