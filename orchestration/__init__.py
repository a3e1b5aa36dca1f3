"""Config, datasets and prompts, the driver loop, CLI, W&B logging and evaluation runs."""
