"""The checkpoint GRPO starts from: the tiny-model factory and the supervised warm start."""
