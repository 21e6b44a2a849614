"""The `minigpt` command: prepare, train, sample, eval, attention, plot, export, bench.

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

    p = commands.add_parser("eval", help="loss, perplexity and bits per byte on held-out text")
    _add_model_arguments(p, dtype="float32")  # float32: numbers comparable across machines
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", default=None, help="a prepared data folder (default: the run's own)")
    source.add_argument("--text-file", default=None, help="any text file, encoded with the model's tokenizer")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--tasks", default=None, help="lm-evaluation-harness tasks instead, e.g. hellaswag,arc_easy")
    p.add_argument("--limit", type=float, default=None, help="--tasks: examples per task (a fraction below 1)")
    p.add_argument("--num-fewshot", type=int, default=None, help="--tasks: examples shown before each question")
    p.add_argument("--include-path", default=None, help="--tasks: a folder of your own task YAML files")
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

    p = commands.add_parser("export", help="write a model for transformers, llama.cpp / Ollama or ONNX Runtime")
    p.add_argument("path", help="a run's out_dir, a checkpoint folder, or a Hugging Face folder or name")
    p.add_argument("--format", required=True, help="hf | gguf | onnx")
    p.add_argument("--out", required=True, help="a new or empty output folder")
    p.add_argument("--outtype", default=None, help="gguf weights: f32 | f16 | q8_0 (default f16)")
    p.add_argument("--latest", action="store_true", help="use the newest checkpoint instead of the best")
    p.set_defaults(run=_export)

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


def _eval(args):
    if args.tasks is not None:
        return _eval_tasks(args)
    if args.limit is not None or args.num_fewshot is not None or args.include_path is not None:
        raise MinigptError("--limit, --num-fewshot and --include-path go with --tasks")
    from .evaluate import run_eval

    run_eval(args)


def _eval_tasks(args):
    import json

    from .checkpoint import load_model
    from .device import resolve_device

    if args.data or args.text_file:
        raise MinigptError("--tasks brings its own data; leave out --data and --text-file")
    device = resolve_device(args.device)
    model, tokenizer, _ = load_model(args.path, latest=args.latest, device=device)
    from .harness import results_table, run_tasks  # lm_eval loads only here

    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    results = run_tasks(
        model,
        tokenizer,
        tasks,
        limit=limit,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        device=device,
        include_path=args.include_path,
    )
    print(json.dumps(results["results"], default=str) if args.json else results_table(results))


def _export(args):
    from .export import export

    for path in export(args.path, args.format, args.out, outtype=args.outtype, latest=args.latest):
        print(f"wrote {path}")


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
