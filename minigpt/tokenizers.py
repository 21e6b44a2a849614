"""Tokenizers behind one small interface, rebuilt exactly from a saved spec.

A tokenizer is named by a *spec* string that `prepare` stores in meta.json:

    char          one id per character of the corpus (vocabulary built from it)
    gpt2          GPT-2's byte-level BPE (tiktoken's r50k_base ranks)
    cl100k_base   the GPT-3.5/4 BPE from tiktoken
    o200k_base    the GPT-4o BPE from tiktoken
    bpe:N         a byte-level BPE with N tokens trained on the corpus
    hf            a Hugging Face tokenizer.json, with its chat template (a model's own, from its folder)

`build_tokenizer(spec, texts)` makes one for a new corpus; `save(dir)` writes
whatever files it needs next to the token files; `load_tokenizer(spec, dir)`
rebuilds the very same tokenizer later, for sampling and evaluation.

Trained BPEs are learned with Hugging Face `tokenizers` (fast, well kept) and
then converted to a `tiktoken.Encoding`, so every tokenizer except `char`
encodes at tiktoken speed.

Chat: any tokenizer can carry the chat special tokens (`add_chat_tokens`), numbered after its
base vocabulary, and then encodes conversations with its chat template (chat_template.py):
`has_chat_template`, `encode_chat(messages, add_generation_prompt=True)` and `stop_token_ids`
(the ids that end a generated answer). Data prepared with `--format chat` and the checkpoints
trained on it save the template beside the tokenizer's files; `load_tokenizer` restores it.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tiktoken

from .chat_template import ChatTemplate
from .errors import MinigptError

EOT_TEXT = "<|endoftext|>"
# GPT-2's pre-tokenization: contractions, letter runs, digit runs, punctuation
# runs and whitespace, each optionally led by one space. Trained BPEs use it too.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
TIKTOKEN_SPECS = {"gpt2": "r50k_base", "cl100k_base": "cl100k_base", "o200k_base": "o200k_base"}
ACCEPTED = "char, gpt2, cl100k_base, o200k_base, bpe:N (N >= 257, e.g. bpe:4096), hf"
CHAR_FILE = "char_vocab.json"
BPE_FILE = "bpe.tiktoken"
HF_FILE = "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"
HF_TEMPLATE_FILE = "chat_template.jinja"  # where newer transformers versions keep the chat template
HF_GENERATION_FILE = "generation_config.json"  # its eos_token_id may list more tokens that end a reply


class Tokenizer:
    """The interface every tokenizer offers (text <-> list of token ids, conversations -> ids)."""

    spec: str
    vocab_size: int
    eot_token: int | None
    chat_template: ChatTemplate | None = None
    chat_token_ids: dict[str, int] = {}  # chat special token text -> id, when the tokenizer has them

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """A conversation's token ids; with add_generation_prompt they end where the assistant's answer begins."""
        if self.chat_template is None:
            raise MinigptError(
                f"tokenizer {self.spec!r} has no chat template; fine-tune the model on data prepared with "
                f"`minigpt prepare FILE --format chat` first"
            )
        return self.chat_template.render(messages, self.encode, self.chat_token_ids, add_generation_prompt)

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end generation: end-of-text and, for a chat tokenizer, its special tokens (end-of-turn
        first; a role token would begin another turn, so the answer is over then too)."""
        ids = [] if self.eot_token is None else [self.eot_token]
        if self.chat_template is not None:
            ends_first = sorted(self.chat_token_ids, key=lambda text: text != self.chat_template.end_of_turn)
            ids += [self.chat_token_ids[text] for text in ends_first]
        return ids

    def add_chat_tokens(self, template: ChatTemplate | None = None) -> None:
        """Add the chat template's special tokens, numbered from the current vocab_size up."""
        if self.chat_template is not None:
            raise MinigptError(f"tokenizer {self.spec!r} already has chat tokens")
        self.chat_template = template or ChatTemplate()
        self.chat_token_ids = {text: self.vocab_size + i for i, text in enumerate(self.chat_template.special_tokens)}
        self.vocab_size += len(self.chat_token_ids)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        """Like encode_batch, as uint32 arrays: what `prepare` writes to disk."""
        return [np.array(ids, dtype=np.uint32) for ids in self.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def save(self, data_dir: str | os.PathLike) -> list[str]:
        """Write the files `load_tokenizer` needs into data_dir (the chat template too); return their names."""
        names = self.save_vocabulary(data_dir)
        return names if self.chat_template is None else [*names, self.chat_template.save(data_dir)]

    def save_vocabulary(self, data_dir: str | os.PathLike) -> list[str]:
        """Write the files that rebuild the base vocabulary (none for named encodings)."""
        return []

    def token_byte_counts(self) -> np.ndarray:
        """UTF-8 bytes of text each id stands for (vocab_size,); 0 for special tokens such as
        end-of-text, which are no text. What bits per byte divides by."""
        raise NotImplementedError


class CharTokenizer(Tokenizer):
    """One id per distinct character, in sorted order (nanoGPT's shakespeare_char).

    The end-of-text token exists only when the corpus has several documents:
    a single text such as tiny Shakespeare gets exactly its 65 characters.
    """

    def __init__(self, chars: list[str], with_eot: bool):
        self.spec = "char"
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.eot_token = len(self.chars) if with_eot else None
        self.vocab_size = len(self.chars) + int(with_eot)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        chars: set[str] = set()
        documents = 0
        for text in texts:
            chars.update(text)
            documents += 1
        return cls(sorted(chars), with_eot=documents > 1)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted(set(text) - self.stoi.keys())
            shown = ", ".join(repr(c) for c in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise MinigptError(
                f"text contains {len(unknown)} character(s) not in the char vocabulary: "
                f"{shown}{more}; use only characters of the training corpus or a BPE tokenizer (gpt2)"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        special = {i: text for text, i in self.chat_token_ids.items()}
        if self.eot_token is not None:
            special[self.eot_token] = EOT_TEXT
        return "".join(special[i] if i in special else self.chars[i] for i in _int_list(ids))

    def token_byte_counts(self) -> np.ndarray:
        return np.array([len(c.encode("utf-8")) for c in self.chars] + [0] * (self.vocab_size - len(self.chars)))

    def save_vocabulary(self, data_dir: str | os.PathLike) -> list[str]:
        payload = {"chars": self.chars, "eot": self.eot_token is not None}
        Path(data_dir, CHAR_FILE).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
        return [CHAR_FILE]

    @classmethod
    def load(cls, data_dir: str | os.PathLike) -> CharTokenizer:
        payload = json.loads(_read_tokenizer_file(data_dir, CHAR_FILE, "char"))
        chars = payload.get("chars") if isinstance(payload, dict) else None
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise MinigptError(f'{Path(data_dir, CHAR_FILE)} is damaged: it has no list of characters ("chars")')
        return cls(chars, with_eot=bool(payload.get("eot")))


class TiktokenTokenizer(Tokenizer):
    """A `tiktoken.Encoding` (named, or built from trained ranks) with `<|endoftext|>`."""

    def __init__(self, spec: str, encoding: tiktoken.Encoding):
        self.spec = spec
        self.encoding = encoding
        self.eot_token = encoding.eot_token
        self.vocab_size = encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # One thread: parallelism comes from prepare's worker processes.
        return self.encoding.encode_ordinary_batch(texts, num_threads=1)

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        # Straight from tiktoken's buffer, skipping Python int lists (~20% faster).
        # With no special token allowed or disallowed, "<|endoftext|>" in text is ordinary text.
        return [self.encoding.encode_to_numpy(t, disallowed_special=()) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(_int_list(ids))

    def add_chat_tokens(self, template: ChatTemplate | None = None) -> None:
        super().add_chat_tokens(template)
        # tiktoken's way to extend an encoding: the same ranks with more special tokens.
        base = self.encoding
        self.encoding = tiktoken.Encoding(
            name=f"{base.name}_chat",
            pat_str=base._pat_str,
            mergeable_ranks=base._mergeable_ranks,
            special_tokens={**base._special_tokens, **self.chat_token_ids},
        )

    def token_byte_counts(self) -> np.ndarray:
        special = self.encoding.special_tokens_set
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            try:
                token = self.encoding.decode_single_token_bytes(i)
            except KeyError:  # an unused id (cl100k_base has a few)
                continue
            counts[i] = 0 if token.decode("utf-8", "replace") in special else len(token)
        return counts

    def __reduce__(self):
        # Named encodings travel to worker processes by name, not by their ranks.
        return (_rebuild, (named_tiktoken, (self.spec,), self.chat_template))


class BPETokenizer(TiktokenTokenizer):
    """A byte-level BPE trained on the corpus, saved as tiktoken ranks."""

    def __init__(self, spec: str, ranks: dict[bytes, int]):
        encoding = tiktoken.Encoding(
            name=spec.replace(":", "_"),
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={EOT_TEXT: len(ranks)},
        )
        super().__init__(spec, encoding)
        self.ranks = ranks

    def __reduce__(self):
        return (_rebuild, (BPETokenizer, (self.spec, self.ranks), self.chat_template))

    def save_vocabulary(self, data_dir: str | os.PathLike) -> list[str]:
        # tiktoken's own file format: "base64(token bytes) rank" per line.
        lines = (f"{base64.b64encode(tok).decode()} {rank}\n" for tok, rank in self.ranks.items())
        Path(data_dir, BPE_FILE).write_text("".join(lines), encoding="ascii")
        return [BPE_FILE]

    @classmethod
    def load(cls, spec: str, data_dir: str | os.PathLike) -> BPETokenizer:
        ranks = {}
        for line in _read_tokenizer_file(data_dir, BPE_FILE, spec).splitlines():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        return cls(spec, ranks)

    @classmethod
    def train(cls, spec: str, texts: Iterable[str]) -> BPETokenizer:
        return cls(spec, train_bpe_ranks(texts, _bpe_size(spec)))


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizer.json` (run by the `tokenizers` library) and its tokenizer_config.json.

    encode() adds no special tokens (no beginning-of-text) and reads none: text is text, so
    "<|im_end|>" typed by a user is ordinary characters, never the control token. The chat template, a
    Jinja template from the model's folder, is rendered in a sandbox (it comes from the internet) and
    then encoded as transformers' apply_chat_template does, special tokens included, except inside the
    messages' contents: only the template's own markers become control tokens, so a message cannot
    open a turn of another role.
    """

    def __init__(self, tokenizer_json: str, config: dict, generation_eos: list[int] | None = None):
        from tokenizers import Tokenizer as RustTokenizer

        self.spec = "hf"
        self.tokenizer_json = tokenizer_json
        self.config = config
        self.generation_eos = list(generation_eos or [])
        self.markup = RustTokenizer.from_str(tokenizer_json)  # reads special-token text as control tokens
        self.hf = RustTokenizer.from_str(tokenizer_json)
        self.hf.encode_special_tokens = True  # reads it as the characters it is
        self.control_texts = [t.content for t in self.markup.get_added_tokens_decoder().values() if t.special]
        self.vocab_size = self.hf.get_vocab_size(with_added_tokens=True)
        self.eot_token = self._special_id("eos_token")

    def _special_id(self, key: str) -> int | None:
        token = self.config.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        return None if token is None else self.hf.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = _int_list(ids)
        if not self.chat_token_ids:
            return self.hf.decode(ids, skip_special_tokens=False)
        # minigpt's chat tokens lie beyond the Rust tokenizer's vocabulary: decode the runs between them
        chat = {i: text for text, i in self.chat_token_ids.items()}
        pieces, run = [], []
        for i in ids:
            if i in chat:
                pieces += [self.hf.decode(run, skip_special_tokens=False), chat[i]]
                run = []
            else:
                run.append(i)
        return "".join([*pieces, self.hf.decode(run, skip_special_tokens=False)])

    # ---- chat --------------------------------------------------------------------------------------

    # The model's own Jinja template comes first; without one, minigpt's chat tokens may be added as for
    # any tokenizer (Tokenizer.add_chat_tokens), and then the base class's methods apply.

    @property
    def has_chat_template(self) -> bool:
        return bool(self.config.get("chat_template")) or super().has_chat_template

    @property
    def stop_token_ids(self) -> list[int]:
        """End-of-text and end-of-turn ids: the eos token, any chat tokens, the generation config's eos_token_id."""
        ids = super().stop_token_ids
        return ids + [i for i in self.generation_eos if i not in ids]

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of messages ([{"role": ..., "content": ...}, ...]) laid out by the chat template.

        A content that holds control-token text is rendered as a placeholder, and the placeholder's
        place encoded as plain text: its "<|im_start|>" stays characters."""
        if not self.config.get("chat_template"):
            return super().encode_chat(messages, add_generation_prompt)
        held = {}  # placeholder -> the content it stands for
        rendered = []
        for i, message in enumerate(messages):
            if any(c in message["content"] for c in self.control_texts):
                held[f"\ue000{i}\ue001"] = message["content"]  # private-use characters: in no template
                message = {**message, "content": f"\ue000{i}\ue001"}
            rendered.append(message)
        text = render_chat_template(
            self.config["chat_template"],
            rendered,
            add_generation_prompt,
            {key: self._special_text(key) for key in ("bos_token", "eos_token", "pad_token", "unk_token")},
        )
        return self._encode_markup(text, held)

    def _encode_markup(self, text: str, held: dict[str, str]) -> list[int]:
        """The template's text with special-token text as control tokens; placeholders as their contents."""
        if not held:  # the common case: one encoding, exactly as transformers makes it
            return self.markup.encode(text, add_special_tokens=False).ids
        pattern = "(" + "|".join(map(re.escape, held)) + ")"
        pieces = re.split(pattern, text)
        if sorted(p for p in pieces if p in held) != sorted(held):
            raise MinigptError("a message holds control-token text and the chat template reshapes it: refused")
        ids = []
        for piece in pieces:
            ids += (
                self.encode(held[piece]) if piece in held else self.markup.encode(piece, add_special_tokens=False).ids
            )
        return ids

    def _special_text(self, key: str) -> str | None:
        token = self.config.get(key)
        return token.get("content") if isinstance(token, dict) else token

    # ---- files -------------------------------------------------------------------------------------

    def save_vocabulary(self, data_dir: str | os.PathLike) -> list[str]:
        Path(data_dir, HF_FILE).write_text(self.tokenizer_json, encoding="utf-8")
        Path(data_dir, HF_CONFIG_FILE).write_text(json.dumps(self.config, indent=2, ensure_ascii=False), "utf-8")
        names = [HF_FILE, HF_CONFIG_FILE]
        if self.generation_eos:
            Path(data_dir, HF_GENERATION_FILE).write_text(json.dumps({"eos_token_id": self.generation_eos}))
            names.append(HF_GENERATION_FILE)
        return names

    @classmethod
    def load(cls, data_dir: str | os.PathLike) -> HFTokenizer:
        """From a Hugging Face model folder or a folder this class saved into."""
        tokenizer_json = _read_tokenizer_file(data_dir, HF_FILE, "hf")
        config_path, template_path = Path(data_dir, HF_CONFIG_FILE), Path(data_dir, HF_TEMPLATE_FILE)
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        if not config.get("chat_template") and template_path.is_file():
            config["chat_template"] = template_path.read_text(encoding="utf-8")
        generation_path = Path(data_dir, HF_GENERATION_FILE)
        eos = json.loads(generation_path.read_text()).get("eos_token_id") if generation_path.is_file() else None
        return cls(tokenizer_json, config, [eos] if isinstance(eos, int) else eos)


def render_chat_template(template: str, messages: list[dict], add_generation_prompt: bool, specials: dict) -> str:
    """Render a Hugging Face chat template as transformers does: a sandboxed Jinja environment with
    trimmed blocks, loop controls, raise_exception() and a tojson that keeps non-ASCII text."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise MinigptError(f"the chat template refused these messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **specials
        )
    except jinja2.TemplateError as e:
        raise MinigptError(f"the chat template could not be rendered ({e})") from None


def _rebuild(make, args: tuple, chat_template: ChatTemplate | None) -> Tokenizer:
    """Unpickle a tokenizer: make(*args), with its chat tokens if it had them."""
    tokenizer = make(*args)
    if chat_template is not None:
        tokenizer.add_chat_tokens(chat_template)
    return tokenizer


def train_bpe_ranks(texts: Iterable[str], vocab_size: int) -> dict[bytes, int]:
    """Learn BPE merges with Hugging Face `tokenizers`; return tiktoken ranks.

    The ranks are: the 256 single bytes (0..255), then each new merge result in
    the order it was learned, so every token ranks above its two parts, which
    is what tiktoken's merge-by-lowest-rank loop needs. One id is left for
    `<|endoftext|>`, so vocab_size counts it. HF's ByteLevel stores bytes as
    printable unicode stand-ins; they are mapped back to raw bytes here.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[EOT_TEXT],
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer)
    merges = json.loads(hf.to_str())["model"]["merges"]

    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    ranks = {bytes([b]): b for b in range(256)}
    for merge in merges:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        token = bytes(to_byte[c] for c in left + right)
        if token not in ranks and len(ranks) < vocab_size - 1:
            ranks[token] = len(ranks)
    return ranks


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable unicode character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def named_tiktoken(spec: str) -> TiktokenTokenizer:
    """gpt2 / cl100k_base / o200k_base from tiktoken's cache (or its download)."""
    try:
        encoding = tiktoken.get_encoding(TIKTOKEN_SPECS[spec])
    except Exception as e:  # network errors, missing cache files, hash mismatch
        raise MinigptError(
            f"tokenizer {spec!r}: the tiktoken encoding {TIKTOKEN_SPECS[spec]!r} could not be loaded or "
            f"downloaded ({type(e).__name__}); connect to the network once, or set TIKTOKEN_CACHE_DIR "
            f"to a folder that holds it"
        ) from None
    return TiktokenTokenizer(spec, encoding)


def build_tokenizer(spec: str, texts: Iterable[str] = ()) -> Tokenizer:
    """Make the tokenizer named by spec; char and bpe:N learn from `texts`."""
    check_spec(spec)
    if spec == "hf":
        raise MinigptError("tokenizer 'hf' comes with a Hugging Face model folder; it cannot be built from a corpus")
    if spec == "char":
        return CharTokenizer.from_texts(texts)
    if spec.startswith("bpe:"):
        return BPETokenizer.train(spec, texts)
    return named_tiktoken(spec)


def load_tokenizer(spec: str, data_dir: str | os.PathLike | None = None) -> Tokenizer:
    """Rebuild the tokenizer saved by `prepare` (spec from meta.json, files from data_dir), chat tokens included."""
    tokenizer = _load_base(spec, data_dir)
    template = None if data_dir is None else ChatTemplate.load(data_dir)
    if template is not None:
        tokenizer.add_chat_tokens(template)
    return tokenizer


def _load_base(spec: str, data_dir: str | os.PathLike | None) -> Tokenizer:
    check_spec(spec)
    if spec in TIKTOKEN_SPECS:
        return named_tiktoken(spec)
    if data_dir is None:
        raise MinigptError(f"tokenizer {spec!r} needs the data folder it was prepared into (it holds its vocabulary)")
    if spec == "char":
        return CharTokenizer.load(data_dir)
    if spec == "hf":
        return HFTokenizer.load(data_dir)
    return BPETokenizer.load(spec, data_dir)


def check_same_vocabulary(theirs: Tokenizer, ours: Tokenizer, where: str) -> None:
    """Refuse token ids from another vocabulary: char and bpe:N are learned from a corpus, so the same
    spec can mean other ids."""
    if theirs.spec != ours.spec:
        raise MinigptError(f"{where} was prepared with tokenizer {theirs.spec!r} but the model uses {ours.spec!r}")
    for attribute in ("chars", "ranks", "tokenizer_json", "chat_template"):
        if getattr(theirs, attribute, None) != getattr(ours, attribute, None):
            raise MinigptError(
                f"{where} was prepared with a different {ours.spec!r} vocabulary "
                f"({theirs.vocab_size} tokens{_chat_note(theirs)}) than the model's "
                f"({ours.vocab_size} tokens{_chat_note(ours)})"
            )


def _chat_note(tokenizer: Tokenizer) -> str:
    return ", with chat tokens" if tokenizer.has_chat_template else ""


def check_spec(spec: str) -> None:
    """Raise MinigptError unless spec names a tokenizer (without loading it)."""
    if spec in ("char", "hf") or spec in TIKTOKEN_SPECS:
        return
    if spec.startswith("bpe:"):
        _bpe_size(spec)
        return
    raise MinigptError(f"unknown tokenizer {spec!r}; accepted: {ACCEPTED}")


MAX_BPE_SIZE = 1 << 20  # a million tokens: far past any useful vocabulary, and the trainer's memory stays sane


def _bpe_size(spec: str) -> int:
    size = spec.removeprefix("bpe:")
    if not size.isdigit() or not 257 <= int(size) <= MAX_BPE_SIZE:
        raise MinigptError(
            f"bad tokenizer {spec!r}: bpe:N needs a whole N from 257 (256 bytes + end-of-text) to {MAX_BPE_SIZE:,}"
        )
    return int(size)


def _int_list(ids: Iterable[int]) -> list[int]:
    """Plain Python ints from a list, numpy array or torch tensor."""
    return ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]


def _read_tokenizer_file(data_dir: str | os.PathLike, name: str, spec: str) -> str:
    path = Path(data_dir, name)
    if not path.is_file():
        raise MinigptError(f"tokenizer {spec!r}: {path} is missing; re-run `minigpt prepare` for this data folder")
    return path.read_text(encoding="utf-8")
