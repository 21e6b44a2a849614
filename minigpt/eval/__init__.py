"""Scoring and looking at a model: held-out loss, perplexity and bits per byte, lm-evaluation-harness
tasks (generation on the engine), attention heatmaps and loss curves.

It stands on the loader, data and generation; nothing below imports it.
"""
