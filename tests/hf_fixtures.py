"""Hugging Face folders for tests: a small trained tokenizer with a chat template, saved by transformers."""

import tokenizers
import transformers

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. Ünïcödé ✓\n" * 20
# Qwen's ChatML layout, with a default system message: loops, conditions and special tokens.
CHATML = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MESSAGES = [{"role": "user", "content": "Whether 'tis nobler?"}, {"role": "assistant", "content": "To be."}]


def make_hf_tokenizer_folder(folder, chat_template=CHATML):
    """A small byte-level BPE with ChatML special tokens, saved by transformers as a model's folder would hold it."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    rust = tokenizers.Tokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rust.train_from_iterator([TEXT], trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=rust, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=chat_template
    )
    fast.save_pretrained(folder)
    return transformers.AutoTokenizer.from_pretrained(folder)
