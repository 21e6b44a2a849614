"""Pictures of a model: attention heatmaps and loss curves, saved as PNG files.

matplotlib is an optional extra (pip install 'minigpt[plot]'), imported only when a picture is drawn.
We draw on matplotlib's object-oriented Figure rather than pyplot: it renders with Agg, needs no
display, and leaves the global backend of a notebook or script that imports minigpt untouched.
"""

import math
from pathlib import Path

import torch

from ..errors import MinigptError
from ..metrics import metrics_file, read_metrics
from ..paths import check_output_file

# How to show characters that would otherwise be invisible in a tick label.
VISIBLE = {" ": "␣", "\n": "⏎", "\t": "⇥", "\r": "↵"}
MAX_LABEL_CHARS = 12
MAX_TICK_LABELS = 64  # beyond this many tokens, label every k-th one


def _figure(**kwargs):
    """A new matplotlib Figure, or a MinigptError saying how to install matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MinigptError("drawing pictures needs matplotlib: pip install 'minigpt[plot]'") from e
    return Figure(**kwargs)


def _save(fig, out_path) -> Path:
    out_path = Path(out_path)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_path, dpi=120)
    except OSError as e:  # the path was checked before drawing: this is a full disk, or a change meanwhile
        raise MinigptError(f"could not write {out_path} ({e.strerror or e})", exit_code=1) from None
    return out_path


# ---- attention ---------------------------------------------------------------------------------------


def display_token(token: str) -> str:
    """A tick label for a token: whitespace made visible, other control characters escaped, long ones cut."""
    label = "".join(VISIBLE.get(ch, ch if ch.isprintable() else repr(ch)[1:-1]) for ch in token)
    if not label:
        return "∅"
    return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1] + "…"


def _layer_maps(weights, layer):
    """Pick one layer from GPT.attention_maps' list as a (n_head, T, T) CPU float tensor."""
    if not weights:
        raise MinigptError("no attention maps to plot: expected a list with one tensor per layer")
    if layer is None:
        layer = len(weights) - 1
    if not 0 <= layer < len(weights):
        raise MinigptError(
            f"layer {layer} is out of range: the model has {len(weights)} layers, 0 to {len(weights) - 1}"
        )
    maps = weights[layer].detach().float().cpu()
    if maps.dim() == 4:  # (B, n_head, T, T) straight from attention_maps
        if maps.shape[0] != 1:
            raise MinigptError(f"plot the attention of one sequence at a time; got a batch of {maps.shape[0]}")
        maps = maps[0]
    if maps.dim() != 3 or maps.shape[-1] != maps.shape[-2]:
        raise MinigptError(f"expected attention weights of shape (n_head, T, T), got {tuple(maps.shape)}")
    return layer, maps


def _heatmap(ax, weights, labels, vmax, fontsize):
    """Draw one (T, T) map: queries down the y axis, keys along the x axis.

    The colours follow the square root of the weight: the first query of a causal map always puts
    weight 1 on itself, and on a linear scale the small weights of longer prompts all look alike.
    """
    from matplotlib.colors import PowerNorm

    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=vmax)
    image = ax.imshow(weights.numpy(), cmap="viridis", norm=norm, interpolation="nearest")
    T = len(labels)
    ticks = list(range(0, T, math.ceil(T / MAX_TICK_LABELS)))
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=fontsize)
    return image


def plot_attention(weights, tokens, out_path, *, layer=None, head=None, title=None, replace=False) -> Path:
    """Draw attention weights as heatmaps and save them as a PNG; returns the path.

    weights: GPT.attention_maps(idx) for one sequence, a list over layers of (1, n_head, T, T) or
    (n_head, T, T) tensors. tokens: the T tokens as strings. By default every head of one layer
    (the last unless `layer` is given) in a grid; with `head`, that one head, large.
    """
    check_output_file(out_path, "--out", replace)
    layer, maps = _layer_maps(weights, layer)
    n_head, T, _ = maps.shape
    if len(tokens) != T:
        raise MinigptError(f"got {len(tokens)} tokens for attention maps over {T} positions")
    if head is not None and not 0 <= head < n_head:
        raise MinigptError(f"head {head} is out of range: layer {layer} has {n_head} heads, 0 to {n_head - 1}")
    labels = [display_token(t) for t in tokens]
    heads = list(range(n_head)) if head is None else [head]
    vmax = max(maps[heads].max().item(), 1e-6)  # one colour scale for every panel, so they compare

    # Size each panel by the number of tokens, within limits; tick labels get smaller as tokens get
    # denser (a label may be about 3/4 of the space one token has), the titles stay readable.
    panel = min(max(3.5, 0.22 * T), 12.0 if head is not None else 7.0)
    fontsize = max(5, min(10, int(0.75 * panel * 72 / min(T, MAX_TICK_LABELS))))
    cols = math.ceil(math.sqrt(len(heads)))
    rows = math.ceil(len(heads) / cols)
    fig = _figure(figsize=(cols * panel + 1.5, rows * panel + 1.0), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, (ax, h) in enumerate(zip(axes, heads)):
        image = _heatmap(ax, maps[h], labels, vmax, fontsize)
        ax.set_title(f"layer {layer} head {h}", fontsize=13)
        if i % cols == 0:  # axis names on the outer panels only
            ax.set_ylabel("query (attending)", fontsize=11)
        if i >= len(heads) - cols:
            ax.set_xlabel("key (attended to)", fontsize=11)
    for ax in axes[len(heads) :]:
        ax.set_visible(False)  # the grid's leftover cells
    colorbar = fig.colorbar(image, ax=axes[: len(heads)].tolist(), shrink=0.8)
    colorbar.set_label("attention weight (square-root scale)", fontsize=11)
    if title is not None:
        fig.suptitle(title, fontsize=15)
    return _save(fig, out_path)


def run_attention(
    path: str,
    prompt: str,
    out: str,
    *,
    layer: int | None = None,
    head: int | None = None,
    latest: bool = False,
    replace: bool = False,
) -> None:
    """`minigpt attention PATH --prompt TEXT --out FILE [--layer L] [--head H] [--latest] [--force]`."""
    check_output_file(out, "--out", replace)  # before loading: a refused --out costs no time
    from ..infer.sample import encode_prompt
    from ..loader import load_model

    model, tokenizer, _ = load_model(path, latest=latest, device="cpu")  # small maps: CPU is enough
    ids = encode_prompt(tokenizer, prompt, model.config.block_size)
    weights = model.attention_maps(torch.tensor([ids]))  # n_layer x (1, n_head, T, T)
    tokens = [tokenizer.decode([i]) for i in ids]
    title = f"{Path(path).name}: {prompt!r}"
    written = plot_attention(weights, tokens, out, layer=layer, head=head, title=title, replace=replace)
    print(f"wrote {written}")


# ---- losses ------------------------------------------------------------------------------------------


def _curve(records, x, key):
    """(xs, ys) of the records that have both the x key and the loss key."""
    points = [(r[x], r[key]) for r in records if x in r and key in r]
    return [p[0] for p in points], [p[1] for p in points]


def plot_losses(metrics_path_or_run_dirs, out_path, *, labels=None, x="step", replace=False) -> Path:
    """Draw training and validation loss of one or more runs against steps or seconds; returns the path.

    metrics_path_or_run_dirs: a run directory (holding metrics.jsonl) or a metrics.jsonl file, or a
    list of them to compare runs. labels name the runs (default: their directory names).
    x: "step" or "time" (wall-clock seconds since the run started).
    """
    if x not in ("step", "time"):
        raise MinigptError(f"x must be 'step' or 'time', got {x!r}")
    check_output_file(out_path, "--out", replace)
    runs = metrics_path_or_run_dirs
    runs = [runs] if isinstance(runs, (str, Path)) else list(runs)
    if not runs:
        raise MinigptError("no runs to plot")
    if labels is None:
        labels = [metrics_file(run).parent.name or str(run) for run in runs]
    elif len(labels) != len(runs):
        raise MinigptError(f"got {len(labels)} labels for {len(runs)} runs")

    fig = _figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for run, label, color in zip(runs, labels, colors):
        records = read_metrics(run)
        train_x, train_y = _curve(records, x, "train_loss")
        val_x, val_y = _curve(records, x, "val_loss")
        if not train_y and not val_y:
            raise MinigptError(f"{metrics_file(run)} has no train_loss or val_loss lines with a {x!r} value")
        if train_y:
            ax.plot(train_x, train_y, color=color, alpha=0.8, linewidth=1.2, label=f"{label} train")
        if val_y:
            ax.plot(
                val_x, val_y, color=color, linestyle="--", marker="o", markersize=4, linewidth=1.5, label=f"{label} val"
            )
    ax.set_xlabel("step" if x == "step" else "wall-clock time (s)", fontsize=12)
    ax.set_ylabel("loss (cross-entropy)", fontsize=12)
    ax.set_title("training and validation loss", fontsize=13)
    ax.tick_params(labelsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=10)
    return _save(fig, out_path)
