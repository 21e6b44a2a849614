"""Training: the trainer and its step, optimizers and schedules, many processes (DDP, FSDP), the
out_dir lock, starting from trained weights (init_from, LoRA) and a classification head.

It stands on the model, config, checkpoints, loader and data; nothing below imports it.
"""
