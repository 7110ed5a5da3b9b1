"""Capacity planning: does a model fit a GPU, with how much KV cache, at which tensor-parallel degree."""
