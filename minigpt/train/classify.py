"""A classification head on a trained GPT (the book's chapter 6): last-token pooling, optional freezing.

    model, tokenizer, _ = minigpt.load("out/quickstart")
    classifier = SequenceClassifier(model, num_classes=4, train_blocks=1)   # lower blocks frozen
    ids, mask = pad_batch([tokenizer.encode(t) for t in texts], model.config.block_size)
    logits = classifier(ids, mask)                                           # (B, num_classes)

The GPT reads the text causally, so its last token's final hidden state is the one that has seen
the whole text: that vector goes through a linear head. Batches are padded on the right, and the
attention mask keeps padding out of attention, so each row's last real token is unaffected by the
others' lengths. Freezing all but the top `train_blocks` blocks (the final norm and the head
always train) makes fine-tuning cheaper and keeps a small data set from wrecking what pretraining
learned.
"""

import torch
from torch import nn

from ..model import GPT


class SequenceClassifier(nn.Module):
    def __init__(self, backbone: GPT, num_classes: int, train_blocks: int | None = None):
        """train_blocks: how many of the top blocks train (None: all; 0: only the final norm and the head)."""
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.n_embd, num_classes)
        if train_blocks is not None:
            freeze_lower_blocks(backbone, train_blocks)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) right-padded ids, attention_mask (B, T) True for real tokens -> (B, num_classes) logits."""
        hidden = self.backbone(idx, attention_mask=attention_mask, return_hidden=True)  # (B, T, C)
        if attention_mask is None:
            last = hidden[:, -1]
        else:
            lengths = attention_mask.long().sum(dim=1)
            last = hidden[torch.arange(idx.shape[0], device=idx.device), lengths - 1]
        return self.head(last)


def freeze_lower_blocks(model: GPT, train_blocks: int) -> None:
    """Only the top train_blocks blocks and the final norm keep requires_grad; embeddings and the rest freeze."""
    blocks = model.transformer.h
    if not 0 <= train_blocks <= len(blocks):
        raise ValueError(f"train_blocks must be between 0 and {len(blocks)}, got {train_blocks}")
    for p in model.parameters():
        p.requires_grad_(False)
    for module in [*blocks[len(blocks) - train_blocks :], model.transformer.ln_f]:
        for p in module.parameters():
            p.requires_grad_(True)


def pad_batch(sequences: list[list[int]], max_len: int, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists (each cut to its first max_len tokens) -> ids (B, T) and attention mask (B, T)."""
    sequences = [s[:max_len] for s in sequences]
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, s in enumerate(sequences):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, : len(s)] = True
    return ids, mask
