"""Generating text: the engine (the one decode loop), sampling settings, text and stop strings, and
the `sample` and `chat` commands on top.

engine.py, sampling.py and text.py import only torch and minigpt.errors / minigpt.device: the model
itself runs on the engine (GPT.generate). sample.py and chat.py stand on the loader. Nothing here
imports training, serving, evaluation or file formats.
"""
