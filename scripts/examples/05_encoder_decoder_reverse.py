"""Reuse minigpt's blocks in a model of your own: a tiny encoder-decoder that learns to reverse digit strings.

    source  3 1 4 1 5 9 2 6   -> encoder (bidirectional self-attention)  -> memory (B, 8, C)
    target  6 2 9 5 1 4 1 3   <- decoder (causal self-attention + cross-attention to the memory)

The decoder is trained with teacher forcing: it reads BOS followed by the true target shifted one
place right and predicts every next digit at once. At test time it decodes greedily, one digit at a time,
feeding back its own guesses. Reversal needs cross-attention: output position t must find source
position 7 - t, which only works if the positions are encoded.

Run:  python scripts/examples/05_encoder_decoder_reverse.py     (about ten seconds on 2 CPU cores)
"""

import time

import torch
import torch.nn.functional as F
from torch import nn

from minigpt.nn import LayerNorm, SinusoidalPositionalEncoding, TransformerBlock

LENGTH = 8  # digits per string
N_DIGITS = 10  # tokens 0-9 are the digits
BOS = 10  # "begin decoding": the decoder's first input
VOCAB = 11


class Seq2Seq(nn.Module):
    def __init__(self, d_model: int = 64, n_head: int = 4, n_layer: int = 2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)  # shared by source and target: the same digits
        self.position = SinusoidalPositionalEncoding(LENGTH, d_model)
        self.encoder = nn.ModuleList(TransformerBlock(d_model, n_head) for _ in range(n_layer))
        self.decoder = nn.ModuleList(TransformerBlock(d_model, n_head, cross_attention=True) for _ in range(n_layer))
        # Pre-norm blocks leave their output unnormalised: normalise the memory and the decoder's output.
        self.encoder_norm = LayerNorm(d_model)
        self.decoder_norm = LayerNorm(d_model)
        self.head = nn.Linear(d_model, N_DIGITS)  # BOS is never a correct output

    def encode(self, src):  # (B, T_src) -> (B, T_src, C)
        x = self.embed(src) + self.position(src.shape[1])
        for block in self.encoder:
            x = block(x)  # no mask: every source digit sees every other
        return self.encoder_norm(x)

    def decode(self, tgt_in, memory):  # (B, T_tgt), (B, T_src, C) -> logits (B, T_tgt, N_DIGITS)
        x = self.embed(tgt_in) + self.position(tgt_in.shape[1])
        for block in self.decoder:
            x = block(x, memory, causal=True)  # causal: position t cannot see the digits it must predict
        return self.head(self.decoder_norm(x))

    def forward(self, src, tgt_in):
        return self.decode(tgt_in, self.encode(src))

    @torch.no_grad()
    def greedy(self, src):
        """Decode one digit at a time, always taking the likeliest: (B, T_src) -> (B, T_src)."""
        memory = self.encode(src)
        out = torch.full((src.shape[0], 1), BOS)
        for _ in range(LENGTH):
            next_digit = self.decode(out, memory)[:, -1].argmax(dim=-1, keepdim=True)
            out = torch.cat([out, next_digit], dim=1)
        return out[:, 1:]  # drop BOS


def as_numbers(strings):
    """One integer per digit string, to compare strings quickly: (B, LENGTH) -> (B,)."""
    return (strings * 10 ** torch.arange(LENGTH - 1, -1, -1)).sum(dim=1)


def training_batch(batch_size, generator, held_out):
    """Random digit strings, minus any that are in the held-out set (so test strings are truly unseen)."""
    src = torch.randint(0, N_DIGITS, (batch_size, LENGTH), generator=generator)
    src = src[~torch.isin(as_numbers(src), held_out)]
    tgt = src.flip(dims=[1])  # the answer: the string reversed
    tgt_in = torch.cat([torch.full((src.shape[0], 1), BOS), tgt[:, :-1]], dim=1)  # teacher forcing: BOS + shifted
    return src, tgt_in, tgt


def main(steps: int = 300, batch_size: int = 128, seed: int = 0, n_test: int = 1000) -> dict:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    test_src = torch.randint(0, N_DIGITS, (n_test, LENGTH), generator=generator)
    held_out = as_numbers(test_src)

    model = Seq2Seq()
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    # Linear warmup, then linear decay to zero: a safe schedule for a short run at a high learning rate.
    warmup = steps // 20
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup)))
    )

    start = time.perf_counter()
    for step in range(1, steps + 1):
        src, tgt_in, tgt = training_batch(batch_size, generator, held_out)
        logits = model(src, tgt_in)  # (B, LENGTH, N_DIGITS)
        loss = F.cross_entropy(logits.reshape(-1, N_DIGITS), tgt.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step == 1 or step % 25 == 0:
            print(f"step {step:5d}  loss {loss.item():.4f}  ({time.perf_counter() - start:.1f} s)")
    train_seconds = time.perf_counter() - start

    model.eval()
    predicted = model.greedy(test_src)
    correct = (predicted == test_src.flip(dims=[1])).all(dim=1)
    accuracy = correct.float().mean().item()
    print(f"trained {steps} steps in {train_seconds:.1f} s")
    print(f"exact-match accuracy on {n_test} held-out strings (greedy decoding): {accuracy:.3f}")
    for src, out in zip(test_src[:5].tolist(), predicted[:5].tolist()):
        print(f"  {''.join(map(str, src))} -> {''.join(map(str, out))}")
    return {"accuracy": accuracy, "train_seconds": train_seconds, "final_loss": loss.item()}


if __name__ == "__main__":
    main()
