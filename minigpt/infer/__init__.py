"""Generating text: the engine (the one decode loop), sampling settings, text and stop strings, and
the `sample` and `chat` commands on top.

engine.py, sampling.py and text.py import only torch and minigpt.errors / minigpt.device: the model
itself runs on the engine (GPT.generate). ready.py loads a model for generating (the loader, the dtype, the
drafter, the thread count), for sample.py, chat.py and `minigpt serve`. Nothing here
imports training, serving, evaluation or file formats.
"""
