"""The driver's services: Ray actors, rollouts and rewards, checkpoints, tracking."""
