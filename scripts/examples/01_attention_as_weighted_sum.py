"""Attention is a weighted sum: each output row mixes the value rows with weights that add up to 1.

Part 1 works the idea out with a budget table you could do on paper.
Part 2 lets the model *learn* the table: queries and keys decide who listens to whom.

Run:  python scripts/examples/01_attention_as_weighted_sum.py
"""

import torch
import torch.nn.functional as F

torch.set_printoptions(precision=4, sci_mode=False)


def budget_table():
    """Part 1: next year's budget of each department is a weighted sum of this year's returns."""
    print("=== Part 1: a budget table is an attention table ===")
    # Three departments invested these amounts (millions), one row per department: (3, 1).
    X = torch.tensor([[10.0], [6.0], [2.5]])
    # Every investment doubles in a year. Multiplying by W is what a "value projection" does.
    W = torch.tensor([[2.0]])
    V = X @ W  # (3, 1): the returns, [20, 12, 5]
    print("returns V = X W:\n", V, sep="")

    # Row i of A says how department i's new budget is put together from everyone's returns.
    # Each row sums to 1: a department receives a *share* of the returns, never more than all of them.
    A = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.6, 0.3, 0.1]])
    print("budget table A (rows sum to 1):\n", A, sep="")
    Z = A @ V  # (3, 1): row i = sum_j A[i, j] * V[j]
    print("next year's budget Z = A V:\n", Z, sep="")
    # By hand: department 2 gets 0.9 * 20 + 0.1 * 12 = 19.2, department 3 0.6 * 20 + 0.3 * 12 + 0.1 * 5 = 16.1
    return V, Z


class TinySelfAttention(torch.nn.Module):
    """Self-attention on one-number tokens: A = softmax(Q K^T), Z = A V.

    Q = X Wq and K = X Wk map each number to a 2-dimensional query and key; their dot product
    scores how much token i attends to token j. V = X Wv is the value each token contributes.
    """

    def __init__(self, d_qk: int = 2):
        super().__init__()
        self.Wq = torch.nn.Parameter(torch.randn(1, d_qk) * 0.1)
        self.Wk = torch.nn.Parameter(torch.randn(1, d_qk) * 0.1)
        self.Wv = torch.nn.Parameter(torch.randn(1, 1))

    def forward(self, X):
        Q, K, V = X @ self.Wq, X @ self.Wk, X @ self.Wv  # (3, 2), (3, 2), (3, 1)
        A = torch.softmax(Q @ K.T, dim=-1)  # (3, 3): each row is a probability distribution
        return A @ V, A


def learn_the_table(epochs: int = 1800, lr: float = 0.004, seed: int = 0):
    """Part 2: find Wq, Wk, Wv whose attention table turns X into the target budget."""
    print("\n=== Part 2: learning the table with self-attention ===")
    torch.manual_seed(seed)
    X = torch.tensor([[10.0], [6.0], [2.5]])
    # A budget close to Part 1's: the model should discover a table much like the hand-made one.
    target = torch.tensor([[20.0], [19.0], [16.0]])
    model = TinySelfAttention()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    for epoch in range(1, epochs + 1):
        Z, A = model(X)
        loss = F.mse_loss(Z, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if epoch == 1 or epoch % 300 == 0:
            print(f"epoch {epoch:4d}  loss {loss.item():.4f}")

    with torch.no_grad():
        Z, A = model(X)
        final_loss = F.mse_loss(Z, target).item()
    print("learned attention table A (rows sum to 1):\n", A, sep="")
    print("row sums:", A.sum(dim=-1))
    print("learned Z = A V:\n", Z, sep="")
    print("target:\n", target, sep="")
    print(f"final loss (mean squared error): {final_loss:.4f}")
    # Z is a convex mix of the values, and the scores Q K^T = (x_i x_j)(Wq . Wk) are tied to the inputs,
    # so not every target is reachable; say so rather than pretend.
    if final_loss < 1.0:
        print("The learned table reproduces the target closely.")
    else:
        print("This target is not reachable exactly with this little model; the table above is its best try.")
    return Z, A, final_loss


def main(epochs: int = 1800, seed: int = 0) -> dict:
    V, Z = budget_table()
    learned_Z, learned_A, final_loss = learn_the_table(epochs=epochs, seed=seed)
    return {"V": V, "Z": Z, "learned_Z": learned_Z, "learned_A": learned_A, "final_loss": final_loss}


if __name__ == "__main__":
    main()
