"""Foreign file formats, kept beside the model and out of it: the model does not know how files look.

hf.py reads and writes Hugging Face causal-LM folders (config.json + safetensors + tokenizer files).
"""
