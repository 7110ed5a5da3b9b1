"""Tensor-parallel-ready building blocks; each parameter carries a weight_loader for full HF tensors."""
