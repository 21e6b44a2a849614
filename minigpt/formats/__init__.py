"""Foreign file formats, kept beside the model and out of it: the model does not know how files look.

hf.py (with hf_architectures.py and hf_tokenizer.py) reads and writes Hugging Face causal-LM folders
(config.json + safetensors + tokenizer files); a model no standard transformers class expresses goes
out with its own modeling code (hf_own_code.py), modeling_minigpt.py, which imports nothing of ours
because the folder carries it to places without minigpt. gguf.py (with vocab.py) writes GGUF for
llama.cpp and Ollama; onnx.py writes ONNX for ONNX Runtime. These import the model, tokenizers and
checkpoints, never training or generation. export.py, `minigpt export`, stands above them on the loader.
"""
