"""The `minigpt` command: prepare, train, sample, serve, eval, attention, plot, bench.

Mistakes a user can make raise MinigptError; here they become one line on stderr and exit code 2
(1 for runtime failures such as a full disk). --debug shows the full traceback instead.
"""

import argparse
import sys

from .errors import MinigptError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the usage block stays behind --help)."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="minigpt", description="Train, sample and inspect small GPTs.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("prepare", help="turn a text corpus into token files for training")
    p.add_argument(
        "source",
        help="a file, folder or glob of .txt/.md/.jsonl/.json/.parquet; a Hub dataset name; "
        "or a built-in corpus: pydocs (offline), shakespeare",
    )
    p.add_argument("--tokenizer", default="gpt2", help="char | gpt2 | cl100k_base | o200k_base | bpe:N (default gpt2)")
    p.add_argument("--out", required=True, help="output folder for train.bin, val.bin, meta.json")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of the text held out for validation")
    p.add_argument("--text-column", default="text", help="the column with the text in json/parquet/Hub data")
    p.add_argument("--split", default="train", help="the split of a Hub dataset to read")
    p.add_argument("--config", default=None, help="the configuration (subset) of a Hub dataset")
    p.add_argument("--num-proc", type=int, default=None, help="tokenizer processes (default: all cores)")
    p.add_argument("--max-chars", type=int, default=None, help="stop after this many characters of text")
    p.set_defaults(run=_prepare)

    p = commands.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="a YAML config, e.g. configs/quickstart.yaml ('-': defaults only)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.max_steps=200")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    p.set_defaults(run=_train)

    p = commands.add_parser("sample", help="generate text from a trained model or GPT-2")
    _add_model_arguments(p, dtype="auto")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default=None, help="text to continue (default: start of a document)")
    prompt.add_argument("--prompt-file", default=None, help="read the prompt from this file")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling, in (0, 1]")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", nargs="+", default=None, metavar="STR", help="end a sample at any of these strings")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.set_defaults(run=_sample)

    p = commands.add_parser("serve", help="serve a model over the OpenAI API, with the attention playground at /")
    _add_model_arguments(p, dtype="auto")
    p.add_argument("--host", default="127.0.0.1", help="the interface to listen on (0.0.0.0: every one)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together in one batch")
    p.add_argument("--max-waiting", type=int, default=64, help="requests queued for a slot before 429s")
    p.add_argument("--api-key", default=None, help="require this bearer key (default: $MINIGPT_API_KEY, else none)")
    p.set_defaults(run=_serve)

    p = commands.add_parser("eval", help="loss, perplexity and bits per byte on held-out text")
    _add_model_arguments(p, dtype="float32")  # float32: numbers comparable across machines
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", default=None, help="a prepared data folder (default: the run's own)")
    source.add_argument("--text-file", default=None, help="any text file, encoded with the model's tokenizer")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=_eval)

    p = commands.add_parser("attention", help="draw a trained model's attention weights for a prompt")
    p.add_argument("path", help="a run's out_dir or a checkpoint folder")
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True, help="the PNG file to write")
    p.add_argument("--layer", type=int, default=None, help="default: the last layer")
    p.add_argument("--head", type=int, default=None, help="default: all heads as a grid")
    p.add_argument("--latest", action="store_true")
    p.set_defaults(run=_attention)

    p = commands.add_parser("plot", help="draw train and val loss from one or more runs' metrics.jsonl")
    p.add_argument("runs", nargs="+", help="run folders (out_dir) to draw")
    p.add_argument("--out", required=True, help="the PNG file to write")
    p.add_argument("--x", choices=("step", "time"), default="step", help="steps or wall-clock seconds")
    p.set_defaults(run=_plot)

    p = commands.add_parser("bench", help="measure training, generation and prepare speed on this machine")
    p.add_argument("--config", default="configs/shakespeare_char.yaml", help="the model to measure training with")
    p.add_argument("--quick", action="store_true", help="fewer and shorter timing windows")
    p.add_argument("--text", default=None, help="a text file to time `prepare` on (e.g. tiny Shakespeare)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.set_defaults(run=_bench)
    return parser


def _add_model_arguments(p: argparse.ArgumentParser, dtype: str) -> None:
    """PATH, --latest, --device and --dtype: how sample and eval find and run a model."""
    p.add_argument("path", help="a run's out_dir, a checkpoint folder, or a Hugging Face GPT-2 folder or name")
    p.add_argument("--latest", action="store_true", help="use the newest checkpoint instead of the best")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default=dtype, help=f"auto | float32 | bfloat16 | float16 (default {dtype})")


def _prepare(args):
    from .prepare import prepare

    prepare(
        args.source,
        args.tokenizer,
        args.out,
        val_fraction=args.val_fraction,
        text_column=args.text_column,
        split=args.split,
        config=args.config,
        num_proc=args.num_proc,
        max_chars=args.max_chars,
    )


def _train(args):
    from .config import load_config
    from .train import train

    train(load_config(args.config, args.overrides), resume=args.resume)


def _sample(args):
    from .sample import run_sample

    run_sample(args)


def _serve(args):
    from .serve import serve

    serve(
        args.path,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_waiting=args.max_waiting,
        api_key=args.api_key,
        latest=args.latest,
        device=args.device,
        dtype=args.dtype,
    )


def _eval(args):
    from .evaluate import run_eval

    run_eval(args)


def _attention(args):
    from .viz import run_attention

    run_attention(args)


def _plot(args):
    from .viz import plot_losses

    path = plot_losses(args.runs, args.out, x=args.x)
    print(f"wrote {path}")


def _bench(args):
    from .bench import run_bench

    run_bench(args)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except MinigptError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
