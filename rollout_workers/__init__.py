"""Generation engines as Ray actors: `transformers` (CPU or any device) and `vllm` (GPU), one interface."""
