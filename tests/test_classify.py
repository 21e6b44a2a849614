"""A classification head on a GPT: padding does not change a row's logits, freezing keeps the lower blocks."""

import inspect

import pytest
import torch

from minigpt import GPT, GPTConfig
from minigpt.train.classify import SequenceClassifier, freeze_lower_blocks, pad_batch

needs_hidden = pytest.mark.skipif(
    "return_hidden" not in inspect.signature(GPT.forward).parameters,
    reason="GPT.forward(return_hidden=, attention_mask=) comes with the model branch",
)


def _gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=3, n_head=2, n_embd=16, pos_encoding="rope"))


def test_pad_batch_right_pads_and_cuts():
    ids, mask = pad_batch([[1, 2, 3], [4], [5, 6, 7, 8, 9]], max_len=4)
    assert ids.tolist() == [[1, 2, 3, 0], [4, 0, 0, 0], [5, 6, 7, 8]]
    assert mask.sum(1).tolist() == [3, 1, 4]


def test_freeze_lower_blocks_leaves_the_top_trainable():
    model = _gpt()
    freeze_lower_blocks(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("transformer.h.2.", "transformer.ln_f")) for n in trainable)
    with pytest.raises(ValueError, match="between 0 and 3"):
        freeze_lower_blocks(model, 4)


@needs_hidden
def test_a_row_gets_the_same_logits_padded_or_alone():
    classifier = SequenceClassifier(_gpt(), num_classes=3).eval()
    rows = [[1, 2, 3, 4, 5], [6, 7]]
    ids, mask = pad_batch(rows, 16)
    together = classifier(ids, mask)
    for i, row in enumerate(rows):
        alone = classifier(torch.tensor([row]))
        torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=0)


@needs_hidden
def test_the_head_learns_a_separable_task():
    classifier = SequenceClassifier(_gpt(), num_classes=2, train_blocks=1)
    ids, mask = pad_batch([[1, 2, 3], [4, 5, 6], [1, 1], [4, 4]], 16)
    labels = torch.tensor([0, 1, 0, 1])
    optimizer = torch.optim.AdamW([p for p in classifier.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(classifier(ids, mask), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert (classifier(ids, mask).argmax(-1) == labels).all()
