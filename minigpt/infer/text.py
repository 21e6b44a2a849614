"""The text of one generated sequence, grown token by token: the one place stop strings are cut and
partial characters are held back.

    text = GeneratedText(tokenizer, stops=["\\n\\n"])
    for token in tokens:
        text.add(token)
        show(text.printable())      # what can be shown now
        if text.stopped: break
    text.finish()                   # text.text is the final text, cut before the first stop string

Decoding is incremental but exact: a byte-level BPE token can end in the middle of a multi-byte
UTF-8 character, which then decodes to U+FFFD. Such tokens are held back until the character is
complete, so the text built piece by piece equals decoding all the ids at once.
"""

REPLACEMENT_CHAR = "\ufffd"  # what an incomplete UTF-8 character decodes to


class GeneratedText:
    """The text of one sequence, cut at the first stop string.

    `text` holds complete characters only; `pending` holds the ids of a character still being
    spelled out byte by byte. Stop strings are searched only in the tail a new piece can complete;
    empty ones are ignored.
    """

    def __init__(self, tokenizer, stops: list[str] = ()):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.longest_stop = max(map(len, self.stops), default=0)
        self.text = ""
        self.pending: list[int] = []
        self.stopped = False

    def add(self, token: int) -> None:
        if self.stopped:
            return
        self.pending.append(token)
        piece = self.tokenizer.decode(self.pending)
        if not piece.endswith(REPLACEMENT_CHAR):
            self._extend(piece)

    def finish(self) -> None:
        """Generation is over: whatever is pending is final, even an invalid byte sequence."""
        if self.pending and not self.stopped:
            self._extend(self.tokenizer.decode(self.pending))
        self.stopped = True

    def _extend(self, piece: str) -> None:
        self.pending = []
        start = max(0, len(self.text) - self.longest_stop + 1)  # earlier text was searched already
        self.text += piece
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def printable(self) -> str:
        """The text that can be shown now: not a tail that might still grow into a stop string."""
        if self.stopped:
            return self.text
        for k in range(min(len(self.text), self.longest_stop - 1), 0, -1):
            if any(s.startswith(self.text[-k:]) for s in self.stops):
                return self.text[:-k]
        return self.text
