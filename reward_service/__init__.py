"""Per-task answer parsing, rewards and metrics, and the Ray pool of reward actors. No models, no torch."""
