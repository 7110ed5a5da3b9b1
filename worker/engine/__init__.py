"""Continuous batching over a paged KV cache: scheduler -> model runner -> sampler, once per step."""
