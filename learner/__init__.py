"""GRPO loss and advantages, the DeepSpeed ZeRO-3 engine per rank, reference model, weight sending, checkpoints."""
