"""Self-attention step by step: from a dot product between two words to minigpt's MultiHeadAttention.

Each of the six tokens of "Your journey starts with one step" is a 3-number embedding. We build up:
  1. scores of one query against every token, and two ways to normalise them,
  2. the context vector of that query, then of all queries at once,
  3. trainable query/key/value projections and scaled scores,
  4. the causal mask (no peeking at later tokens) and dropout,
  5. several heads, and finally minigpt's own MultiHeadAttention giving the very same numbers.

Run:  python scripts/examples/03_self_attention_step_by_step.py
"""

import math

import torch

from minigpt.nn import MultiHeadAttention

torch.set_printoptions(precision=4, sci_mode=False)

WORDS = ["Your", "journey", "starts", "with", "one", "step"]
X = torch.tensor(
    [
        [0.43, 0.15, 0.89],  # Your
        [0.55, 0.87, 0.66],  # journey
        [0.57, 0.85, 0.64],  # starts
        [0.22, 0.58, 0.33],  # with
        [0.77, 0.25, 0.10],  # one
        [0.05, 0.80, 0.55],
    ]
)  # step      (T, d_in) = (6, 3)


def one_query():
    print("=== 1. One query: how much should 'journey' attend to each token? ===")
    query = X[1]  # x(2), the second token
    scores = X @ query  # (6,): dot product of x(2) with every token, itself included
    print("scores x(i) . x(2):", scores)

    # Two ways to turn scores into weights that sum to 1:
    naive = scores / scores.sum()  # breaks for negative scores, and is not sharp
    weights = torch.softmax(scores, dim=0)  # always positive, favours the largest scores more
    print("naive weights (divide by the sum):", naive, " sum:", naive.sum())
    print("softmax weights:                  ", weights, " sum:", weights.sum())

    # The context vector: the tokens averaged with those weights, i.e. what 'journey' gathers from the sentence.
    z2 = weights @ X  # (3,)
    print("context vector z(2):", z2)
    return scores, weights, z2


def all_queries():
    print("\n=== 2. All queries at once: A = softmax(X X^T), Z = A X ===")
    scores = X @ X.T  # (6, 6): row i holds query i's scores against every key
    A = torch.softmax(scores, dim=-1)  # normalise each row
    Z = A @ X  # (6, 3): row i is the context vector of token i
    print("attention weights A:\n", A, sep="")
    print("row sums:", A.sum(dim=-1))
    print("context vectors Z:\n", Z, sep="")
    return A, Z


def trainable_projections(d_in: int = 3, d_out: int = 2):
    print("\n=== 3. Trainable projections: Q = X Wq, K = X Wk, V = X Wv ===")
    # Attending with the raw embeddings means 'similar words attend to each other' and nothing else.
    # Learned projections let a model decide what to look for (query), what to offer (key) and what to pass on (value).
    torch.manual_seed(123)
    Wq, Wk, Wv = (torch.randn(d_in, d_out) for _ in range(3))
    Q, K, V = X @ Wq, X @ Wk, X @ Wv  # (6, 2) each
    # Divide by sqrt(d_k): the dot product of d_k random numbers grows like sqrt(d_k), and softmax of
    # large scores is nearly one-hot, with vanishing gradients.
    scores = Q @ K.T / math.sqrt(d_out)  # (6, 6)
    A = torch.softmax(scores, dim=-1)
    print("Wq:\n", Wq, sep="")
    print("scaled scores Q K^T / sqrt(d_k):\n", scores, sep="")
    print("weights:\n", A, sep="")
    print("context vectors A V:\n", A @ V, sep="")
    return scores


def causal_mask_and_dropout(scores):
    print("\n=== 4. Causal mask: a token may only look at itself and earlier tokens ===")
    T = scores.shape[0]
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)  # True above the diagonal
    # Right way: set future scores to -inf before softmax; exp(-inf) = 0, so they get no weight.
    masked = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    print("masked weights (-inf, then softmax):\n", masked, sep="")
    # Same thing the long way: softmax over everything, zero the future, renormalise the rows.
    # Softmax's denominator is a plain sum, so dropping terms and renormalising gives the same numbers.
    renormalised = torch.softmax(scores, dim=-1).masked_fill(future, 0.0)
    renormalised = renormalised / renormalised.sum(dim=-1, keepdim=True)
    difference = (masked - renormalised).abs().max().item()
    print(f"max difference from 'softmax, zero, renormalise': {difference:.2e}")

    print("\n=== Dropout (p = 0.5) on a 6x6 matrix of ones ===")
    # In training, dropout zeroes each weight with probability p and multiplies the survivors by
    # 1 / (1 - p) = 2, so the expected value stays the same. At eval time it does nothing.
    torch.manual_seed(123)
    dropout = torch.nn.Dropout(p=0.5)
    print(dropout(torch.ones(T, T)))
    return masked, difference


def multi_head(d_in: int = 3, d_out: int = 4, n_head: int = 2):
    print("\n=== 5. Multi-head attention: several attentions side by side ===")
    # Each head gets its own d_out / n_head = 2 columns of Wq, Wk, Wv, attends on its own (causally),
    # and the heads' outputs are concatenated and mixed by an output projection Wo.
    torch.manual_seed(123)
    Wq, Wk, Wv = (torch.randn(d_in, d_out) for _ in range(3))
    Wo = torch.randn(d_out, d_out)
    head_dim = d_out // n_head
    T = X.shape[0]
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    heads = []
    for h in range(n_head):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        Q, K, V = X @ Wq[:, cols], X @ Wk[:, cols], X @ Wv[:, cols]  # (6, 2) each
        scores = (Q @ K.T / math.sqrt(head_dim)).masked_fill(future, float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ V)  # (6, 2)
    Z = torch.cat(heads, dim=-1) @ Wo  # (6, 4)
    print("multi-head output (step by step):\n", Z, sep="")

    # minigpt's MultiHeadAttention sits on a residual stream, so its output is as wide as its input
    # (d_model in, d_model out). Our input has 3 features and our output 4; to compare, widen the input
    # to 4 features with a zero column. The zero feature multiplies whatever weights it meets by 0,
    # so the projections, and therefore every number, are unchanged.
    x = torch.cat([X, torch.zeros(T, 1)], dim=-1)[None]  # (1, 6, 4): a batch of one sentence
    mha = MultiHeadAttention(d_out, n_head, bias=False)
    with torch.no_grad():
        # c_attn maps d_model -> [all query heads | all key heads | all value heads], and nn.Linear
        # stores its weight as (out, in): stack our (in, out) matrices side by side, pad, transpose.
        W_qkv = torch.cat([Wq, Wk, Wv], dim=1)  # (3, 12)
        W_qkv = torch.cat([W_qkv, torch.zeros(1, 3 * d_out)], dim=0)  # (4, 12): weights for the zero feature
        mha.c_attn.weight.copy_(W_qkv.T)  # (12, 4)
        mha.c_proj.weight.copy_(Wo.T)
        ours = mha(x, causal=True)[0]  # (6, 4)
    difference = (ours - Z).abs().max().item()
    print("minigpt.nn.MultiHeadAttention output:\n", ours, sep="")
    print(f"max difference: {difference:.2e}")
    return Z, ours, difference


def main() -> dict:
    scores, weights, z2 = one_query()
    A, Z = all_queries()
    print("row 2 of Z equals z(2):", torch.allclose(Z[1], z2))
    scaled_scores = trainable_projections()
    causal_weights, mask_difference = causal_mask_and_dropout(scaled_scores)
    step_by_step, minigpt_output, mha_difference = multi_head()
    return {
        "scores": scores,
        "weights": weights,
        "z2": z2,
        "A": A,
        "Z": Z,
        "scaled_scores": scaled_scores,
        "causal_weights": causal_weights,
        "mask_difference": mask_difference,
        "multihead_step_by_step": step_by_step,
        "multihead_minigpt": minigpt_output,
        "multihead_difference": mha_difference,
    }


if __name__ == "__main__":
    main()
