"""Training: the trainer (trainer.py) composed of its step (step.py), checkpoints and resuming
(checkpointing.py), the time-budget clock (clock.py), dtype=auto's timing on CPUs (precision.py) and
what a run says and logs (report.py); optimizers and schedules (optim.py), many processes (parallel.py,
fsdp.py), the out_dir lock (lock.py), starting from trained weights (init_from.py, finetune.py: LoRA)
and a classification head (classify.py).

It stands on the model, config, checkpoints, loader and data; nothing below imports it.
"""
