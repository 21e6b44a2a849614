"""Attention pooling: estimate an unknown value from known (key, value) pairs, like kernel regression.

We know three people's waistlines (keys) and weights (values). To guess the weight of someone
with waistline 62 (the query), average the known weights, giving more weight to the people whose
waistline is close to 62. "How close" is the score; softmax turns scores into weights.

Then the same with two features per person and the three classic scoring functions:
dot product, scaled dot product (the Transformer's) and additive (Bahdanau et al.).

Run:  python scripts/examples/02_attention_pooling_kernel_regression.py
"""

import math

import torch

from minigpt.nn import attention_weights

torch.set_printoptions(precision=4, sci_mode=False)


def one_feature():
    print("=== One feature: waistline -> weight ===")
    keys = torch.tensor([68.0, 60.0, 64.0])  # waistlines we know
    values = torch.tensor([126.0, 110.0, 115.0])  # their weights
    query = torch.tensor(62.0)  # the waistline we want a weight for

    # Gaussian kernel score: the closer the key, the higher (0 at distance 0, falling off quadratically).
    scores = -((query - keys) ** 2) / 2  # (3,): [-18, -2, -2]
    weights = torch.softmax(scores, dim=-1)  # (3,): positive, sum to 1
    estimate = weights @ values  # a weighted average of the known weights
    print("scores  -(q - k)^2 / 2:", scores)
    print("weights softmax(scores):", weights)
    print(f"estimate for waistline 62: {estimate.item():.4f}")
    # 60 and 64 are equally close to 62 and share almost all the weight; 68 is far away and gets ~0.
    return scores, weights, estimate


def two_features():
    print("\n=== Two features per person ===")
    keys = torch.tensor([[68.0, 91.0], [60.0, 87.0], [64.0, 88.0]])  # (3, 2): waistline, another measure
    values = torch.tensor([[126.0, 180.0], [110.0, 172.0], [115.0, 170.0]])  # (3, 2): weight, height
    queries = torch.tensor([[64.0, 85.0], [61.0, 80.0]])  # (2, 2): two people to estimate
    d = keys.shape[-1]

    # 1. Dot product: score(q, k) = q . k
    dot_scores = queries @ keys.T  # (2, 3)
    dot_weights = torch.softmax(dot_scores, dim=-1)
    print("dot-product scores:\n", dot_scores, sep="")
    print("dot-product weights:\n", dot_weights, sep="")
    print("dot-product estimates:\n", dot_weights @ values, sep="")
    # The scores differ by hundreds, so softmax puts all weight on one key: the *longest* one (68, 91),
    # for both queries. A dot product measures length as well as direction, not closeness. Note that
    # -|q - k|^2 / 2 = q . k - |q|^2 / 2 - |k|^2 / 2: the Gaussian kernel is the dot product minus a
    # penalty for long keys (the |q|^2 term is the same for every key and softmax ignores it).

    # 2. Scaled dot product: score = q . k / sqrt(d), the Transformer's choice. minigpt computes exactly
    # this (with softmax) in attention_weights; dividing by sqrt(d) keeps the scores' spread independent
    # of the width d for random vectors, but with raw features like these it is still far too wide.
    scaled_weights = attention_weights(queries, keys)  # (2, 3)
    print(
        f"scaled dot-product scores (divided by sqrt({d}) = {math.sqrt(d):.4f}):\n", dot_scores / math.sqrt(d), sep=""
    )
    print("scaled dot-product weights (minigpt.nn.attention_weights):\n", scaled_weights, sep="")
    print("scaled dot-product estimates:\n", scaled_weights @ values, sep="")

    # 3. Additive: score = w_v . tanh(W_q q + W_k k), a one-hidden-layer network of query and key.
    # In a real model W_q, W_k, w_v are learned; here they are small random numbers (seeded) so that
    # tanh is not saturated by inputs in the 60s to 90s.
    torch.manual_seed(0)
    hidden = 4
    W_q = torch.randn(hidden, d) * 0.01
    W_k = torch.randn(hidden, d) * 0.01
    w_v = torch.randn(hidden)
    print("additive W_q:\n", W_q, "\nadditive W_k:\n", W_k, "\nadditive w_v:\n", w_v, sep="")
    # Broadcast every query against every key: (2, 1, hidden) + (1, 3, hidden) -> (2, 3, hidden)
    features = torch.tanh((queries @ W_q.T)[:, None, :] + (keys @ W_k.T)[None, :, :])
    additive_scores = features @ w_v  # (2, 3)
    additive_weights = torch.softmax(additive_scores, dim=-1)
    print("additive scores:\n", additive_scores, sep="")
    print("additive weights:\n", additive_weights, sep="")
    print("additive estimates:\n", additive_weights @ values, sep="")

    # 4. Back to the Gaussian kernel, now in two dimensions: a score that really measures closeness.
    kernel_weights = torch.softmax(-(torch.cdist(queries, keys) ** 2) / 2, dim=-1)  # (2, 3)
    print("Gaussian-kernel weights -|q - k|^2 / 2, for comparison:\n", kernel_weights, sep="")
    print("Gaussian-kernel estimates:\n", kernel_weights @ values, sep="")

    return {
        "dot_scores": dot_scores,
        "dot_weights": dot_weights,
        "scaled_weights": scaled_weights,
        "additive_params": (W_q, W_k, w_v),
        "additive_scores": additive_scores,
        "additive_weights": additive_weights,
        "kernel_weights": kernel_weights,
    }


def main() -> dict:
    scores, weights, estimate = one_feature()
    results = two_features()
    results.update(scores=scores, weights=weights, estimate=estimate.item())
    return results


if __name__ == "__main__":
    main()
