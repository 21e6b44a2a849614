"""Multi-head attention written two ways, which compute the same function.

Way 1 (the paper's notation): every head h has its own small matrices W_q^h, W_k^h, W_v^h of shape
(d_model, head_dim); each head attends on its own, the head outputs are concatenated and W_O mixes them.

Way 2 (what real code does): one big (d_model, d_model) matrix per Q, K and V whose columns are all
the heads' columns side by side; a reshape and a transpose then turn (B, T, d_model) into
(B, n_head, T, head_dim), so every head runs in one batched matrix multiply.

If the big matrix is the small ones concatenated, both ways give the same numbers, and so does
minigpt's MultiHeadAttention, which fuses Q, K and V into a single matrix c_attn.

Run:  python scripts/examples/04_multihead_two_ways.py
"""

import math

import torch

from minigpt.nn import MultiHeadAttention

torch.set_printoptions(precision=4, sci_mode=False)

B, T, D_MODEL, N_HEAD = 2, 5, 8, 2
HEAD_DIM = D_MODEL // N_HEAD


def attention(q, k, v):
    """Causal scaled dot-product attention on (..., T, head_dim) tensors."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T, T)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v


def separate_heads(x, Wq_heads, Wk_heads, Wv_heads, W_O):
    """Way 1: a loop over heads, each with its own (d_model, head_dim) projections."""
    outputs = [
        attention(x @ Wq, x @ Wk, x @ Wv)  # (B, T, head_dim) per head
        for Wq, Wk, Wv in zip(Wq_heads, Wk_heads, Wv_heads)
    ]
    return torch.cat(outputs, dim=-1) @ W_O  # concat: (B, T, d_model), then mix the heads


def split_heads(x, Wq, Wk, Wv, W_O):
    """Way 2: one projection each for Q, K, V, then split the columns into heads."""

    def to_heads(t):  # (B, T, d_model) -> (B, T, n_head, head_dim) -> (B, n_head, T, head_dim)
        return t.view(B, T, N_HEAD, HEAD_DIM).transpose(1, 2)

    q, k, v = to_heads(x @ Wq), to_heads(x @ Wk), to_heads(x @ Wv)
    y = attention(q, k, v)  # (B, n_head, T, head_dim): all heads in one batched matmul
    y = y.transpose(1, 2).reshape(B, T, D_MODEL)  # back to (B, T, d_model): this *is* the concatenation
    return y @ W_O


def main() -> dict:
    torch.manual_seed(0)
    x = torch.randn(B, T, D_MODEL)  # (B, T, d_model)
    # Way 1's weights: one small matrix per head for each of Q, K, V.
    Wq_heads, Wk_heads, Wv_heads = (
        [torch.randn(D_MODEL, HEAD_DIM) / math.sqrt(D_MODEL) for _ in range(N_HEAD)] for _ in range(3)
    )
    W_O = torch.randn(D_MODEL, D_MODEL) / math.sqrt(D_MODEL)

    # Way 2's weights are the same numbers: head h owns columns h * head_dim ... (h + 1) * head_dim - 1.
    Wq, Wk, Wv = (torch.cat(heads, dim=1) for heads in (Wq_heads, Wk_heads, Wv_heads))  # (d_model, d_model)

    way1 = separate_heads(x, Wq_heads, Wk_heads, Wv_heads, W_O)
    way2 = split_heads(x, Wq, Wk, Wv, W_O)
    print("way 1, separate heads (first sentence):\n", way1[0], sep="")
    print("way 2, one projection split into heads (first sentence):\n", way2[0], sep="")
    diff_ways = (way1 - way2).abs().max().item()
    print(f"max |way 1 - way 2| = {diff_ways:.2e}")

    # minigpt: c_attn holds [Wq | Wk | Wv] as one (d_model, 3 d_model) matrix, stored (out, in) by nn.Linear.
    mha = MultiHeadAttention(D_MODEL, N_HEAD, bias=False).eval()
    with torch.no_grad():
        mha.c_attn.weight.copy_(torch.cat([Wq, Wk, Wv], dim=1).T)  # (3 d_model, d_model)
        mha.c_proj.weight.copy_(W_O.T)
        ours = mha(x, causal=True)
    diff_minigpt = (ours - way1).abs().max().item()
    print(f"max |minigpt MultiHeadAttention - way 1| = {diff_minigpt:.2e}")
    return {"way1": way1, "way2": way2, "minigpt": ours, "diff_ways": diff_ways, "diff_minigpt": diff_minigpt}


if __name__ == "__main__":
    main()
