"""Data: the public formats, synthetic scenes, prompts, and how a sample becomes a prompt."""
