"""Foreign file formats, kept beside the model and out of it: the model does not know how files look.

hf.py (with hf_architectures.py and hf_tokenizer.py) reads and writes Hugging Face causal-LM folders
(config.json + safetensors + tokenizer files); gguf.py (with vocab.py) writes GGUF for llama.cpp and
Ollama; onnx.py writes ONNX for ONNX Runtime. These import the model, tokenizers and checkpoints, never
training or generation. export.py, `minigpt export`, stands above them on the loader.
"""
