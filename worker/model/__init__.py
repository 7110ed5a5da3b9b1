"""The Llama-family decoder the engine runs: config, tensor-parallel-ready layers, RoPE, the model."""
