"""The `minigpt` command: prepare, train, sample, chat, serve, eval, attention, plot, export, bench.

Mistakes a user can make raise MinigptError; here they become one line on stderr and exit code 2
(1 for runtime failures such as a full disk). --debug shows the full traceback instead.
"""

import argparse
import signal
import sys

from .errors import MinigptError

ESCAPES = r"type \n for a newline, \t for a tab, \\ for a backslash"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the usage block stays behind --help), and --help
    shows every option's default beside its meaning."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

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
    p.add_argument("--tokenizer", default="gpt2", help="char | gpt2 | cl100k_base | o200k_base | bpe:N")
    p.add_argument("--out", required=True, help="output folder for train.bin, val.bin, meta.json")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share held out for validation: the end of the text for one document, else whole documents "
        "(the summary says how much text that is)",
    )
    p.add_argument(
        "--text-column", default=None, help="the column with the text in json/parquet/Hub data (None: 'text')"
    )
    p.add_argument("--split", default="train", help="the split of a Hub dataset to read")
    p.add_argument("--config", default=None, help="the configuration (subset) of a Hub dataset")
    p.add_argument("--num-proc", type=int, default=None, help="tokenizer processes (None: all cores)")
    p.add_argument("--max-chars", type=int, default=None, help="stop after this many characters of text")
    p.add_argument(
        "--format",
        choices=("text", "chat", "preference"),
        default="text",
        help="chat: conversations, answers trained; preference: prompt/chosen/rejected pairs for DPO",
    )
    p.add_argument(
        "--tokenizer-from", default=None, metavar="PATH", help="the tokenizer of this run, checkpoint or HF model"
    )
    p.add_argument(
        "--max-tokens", type=int, default=1025, help="chat, preference: drop longer conversations (block_size + 1)"
    )
    p.set_defaults(run=_prepare)

    p = commands.add_parser("train", help="train a model from a YAML config")
    p.add_argument("config", help="a YAML config, e.g. configs/quickstart.yaml ('-': defaults only)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.max_steps=200")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    p.add_argument(
        "--time",
        default=None,
        metavar="DURATION",
        help="a wall-clock budget (90s, 5m, 1.5h): the schedule ends fully decayed when it is spent "
        "(sets train.max_seconds; max_steps is then ignored)",
    )
    p.set_defaults(run=_train)

    p = commands.add_parser("sample", help="generate text from a trained model or GPT-2")
    _add_model_arguments(p, dtype="auto")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", help=f"text to continue ('' starts a new document); {ESCAPES}")
    prompt.add_argument("--prompt-file", default=None, help="read the prompt from this UTF-8 file, as it is")
    p.add_argument("--num-samples", type=int, default=1, help="samples to generate, as one batch")
    _add_sampling_arguments(p, max_new_tokens=200, what="sample")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    _add_speculative(p)
    _add_compile(p)
    p.set_defaults(run=_sample)

    p = commands.add_parser("chat", help="talk with a chat-tuned model (one message per line when piped)")
    _add_model_arguments(p, dtype="auto")
    p.add_argument("--system", default=None, help="the system message")
    _add_sampling_arguments(p, max_new_tokens=256, what="answer")
    _add_max_context(p)
    _add_speculative(p)
    _add_compile(p)
    p.set_defaults(run=_chat)

    p = commands.add_parser("serve", help="serve a model over the OpenAI API, with the attention playground at /")
    _add_model_arguments(p, dtype="auto")
    p.add_argument("--host", default="127.0.0.1", help="the interface to listen on (0.0.0.0: every one)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together in one batch")
    p.add_argument("--max-waiting", type=int, default=64, help="requests queued for a slot before 429s")
    p.add_argument("--api-key", default=None, help="require this bearer key (default: $MINIGPT_API_KEY, else none)")
    _add_max_context(p)
    p.add_argument("--quiet", action="store_true", help="no access line per request on stderr")
    _add_speculative(p)
    _add_compile(p)
    p.set_defaults(run=_serve)

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
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=_attention)

    p = commands.add_parser("plot", help="draw train and val loss from one or more runs' metrics.jsonl")
    p.add_argument("runs", nargs="+", help="run folders (out_dir) to draw")
    p.add_argument("--out", required=True, help="the PNG file to write")
    p.add_argument("--x", choices=("step", "time"), default="step", help="steps or wall-clock seconds")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
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
    p.add_argument(
        "--finetune",
        action="store_true",
        help="also time full and LoRA fine-tuning of a GPT-2 124M-shaped model against transformers + peft",
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="also time the server with 1, 4 and 8 concurrent clients (with --llama-cpp: beside llama-cpp-python's)",
    )
    p.add_argument(
        "--llama-cpp",
        action="store_true",
        help="also time llama.cpp's decode beside minigpt's on the same GGUF-exported models, 1 and 2 threads "
        "(needs llama-cpp-python; about 3 minutes; with --serve also its server, which needs its [server] extras)",
    )
    p.add_argument(
        "--speculative",
        default=None,
        metavar="RUN",
        help="also time speculative decoding at batch 1 with this char run on --text (tiny Shakespeare): "
        "a passage continued and one quoted, plain against prompt lookup (and --draft)",
    )
    p.add_argument("--draft", default=None, metavar="RUN", help="--speculative: a smaller draft model to time too")
    p.add_argument(
        "--nanogpt",
        default=None,
        metavar="DIR",
        help="also run this nanoGPT checkout beside minigpt, whole processes (needs --text: tiny Shakespeare; "
        "about 9 minutes, 2 with --quick)",
    )
    p.add_argument(
        "--budgets",
        action="store_true",
        help="also train the fast recipe on 30, 90 and 300 s budgets (needs --text; about 7.5 minutes)",
    )
    p.set_defaults(run=_bench)
    return parser


def _add_sampling_arguments(p: argparse.ArgumentParser, max_new_tokens: int, what: str) -> None:
    """The sampling flags of sample and chat: one SamplingParams (minigpt/infer/sampling.py), one check."""
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=f"tokens to generate per {what}")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 is greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k likeliest tokens")
    p.add_argument(
        "--top-p", type=float, default=None, help="nucleus sampling: the likeliest tokens up to mass p, in (0, 1]"
    )
    p.add_argument("--seed", type=int, default=None, help="make sampling reproducible (0 to 2**64 - 1)")
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="STR",
        help=f"end a {what} where this string appears (repeat for several); {ESCAPES}",
    )
    p.add_argument("--ignore-eos", action="store_true", help="go on past end-of-text and end-of-turn tokens")


def _add_max_context(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-context",
        type=int,
        default=None,
        metavar="N",
        help="the most tokens a sequence may use, prompt included (default: the model's context); "
        "KV-cache memory grows with use up to this",
    )


def _add_speculative(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--speculative",
        default=None,
        metavar="prompt-lookup|PATH",
        help="speculative decoding at batch 1, same text or distribution: drafts copied from the context "
        "(prompt-lookup) or from a smaller model of the same tokenizer (its PATH)",
    )


def _add_compile(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile the one-token decode step ahead of time (torch.export, AOTInductor): no Python inside a "
        "step, after 30-100 s of compiling at the first tokens; needs a C++ compiler on a CPU (without one: a "
        "line, and no compiling)",
    )


def _sampling_params(args, on_full: str):
    """The SamplingParams the sampling flags ask for (checked by the command, in the flags' names)."""
    from .infer.sample import unescape
    from .infer.sampling import SamplingParams

    return SamplingParams(
        max_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=[unescape(s) for s in args.stop],
        on_full=on_full,
        ignore_eos=args.ignore_eos,
    )


def _add_model_arguments(p: argparse.ArgumentParser, dtype: str) -> None:
    """PATH, --latest, --device, --dtype and --quantize: how sample, chat, serve and eval find and run a model."""
    p.add_argument("path", help="a run's out_dir, a checkpoint folder, or a Hugging Face GPT-2 folder or name")
    p.add_argument("--latest", action="store_true", help="use the newest checkpoint instead of the best")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default=dtype, help="auto | float32 | bfloat16 | float16")
    p.add_argument(
        "--quantize",
        default=None,
        choices=["int8"],
        help="int8: store the weights in int8, for faster generation on a CPU (a little less exact)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: $MINIGPT_THREADS, else per core)")


def _prepare(args):
    from .data.prepare import prepare, summary

    tokenizer = args.tokenizer
    if args.tokenizer_from is not None:
        from .train.init_from import source_tokenizer

        tokenizer = source_tokenizer(args.tokenizer_from)
    if args.format != "text":
        # conversations and preference pairs: rows through the chat template, the same options
        if args.format == "chat":
            from .data.chat import prepare_chat as prepare_rows
            from .data.chat import summary as rows_summary
        else:
            from .data.preference import prepare_preference as prepare_rows
            from .data.preference import summary as rows_summary
        meta = prepare_rows(
            args.source,
            tokenizer,
            args.out,
            val_fraction=args.val_fraction,
            max_tokens=args.max_tokens,
            split=args.split,
            config=args.config,
        )
        print("\n".join(rows_summary(meta)), file=sys.stderr)
        return
    meta = prepare(
        args.source,
        tokenizer,
        args.out,
        val_fraction=args.val_fraction,
        text_column=args.text_column,
        split=args.split,
        config=args.config,
        num_proc=args.num_proc,
        max_chars=args.max_chars,
    )
    print(summary(meta, args.out))


def _train(args):
    from .config import load_config, parse_duration
    from .device import set_threads
    from .train.trainer import train

    budget = [f"train.max_seconds={parse_duration(args.time)}"] if args.time is not None else []
    config = load_config(args.config, [*args.overrides, *budget])
    set_threads(config.threads)
    result = train(config, resume=args.resume)
    if "stopped_by" in result:  # saved, not finished: exit as a shell reports the signal, so `&&` stops
        sys.exit(128 + signal.Signals[result["stopped_by"]])


def _model_choice(args):
    """The model and how to load it, from the options sample, chat and serve share."""
    from .infer.ready import ModelChoice

    return ModelChoice(
        args.path,
        latest=args.latest,
        device=args.device,
        dtype=args.dtype,
        quantize=args.quantize,
        speculative=args.speculative,
        measure_threads=args.threads is None,  # no --threads: time which count decodes faster
        compile=args.compile,
    )


def _sample(args):
    from .infer.sample import run_sample, unescape

    run_sample(
        _model_choice(args),
        _sampling_params(args, on_full="slide"),
        prompt=unescape(args.prompt),
        prompt_file=args.prompt_file,
        num_samples=args.num_samples,
        stream=args.stream,
    )


def _chat(args):
    from .infer.chat import chat_with

    chat_with(
        _model_choice(args),
        _sampling_params(args, on_full="slide"),
        system=args.system,
        max_context=args.max_context,
    )


def _serve(args):
    from .serve import serve

    serve(
        _model_choice(args),
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        max_waiting=args.max_waiting,
        api_key=args.api_key,
        max_context=args.max_context,
        quiet=args.quiet,
    )


def _eval(args):
    if args.tasks is not None:
        return _eval_tasks(args)
    if args.limit is not None or args.num_fewshot is not None or args.include_path is not None:
        raise MinigptError("--limit, --num-fewshot and --include-path go with --tasks")
    from .eval.evaluate import run_eval

    run_eval(
        args.path,
        data=args.data,
        text_file=args.text_file,
        batch_size=args.batch_size,
        as_json=args.json,
        latest=args.latest,
        device=args.device,
        dtype=args.dtype,
        quantize=args.quantize,
    )


def _eval_tasks(args):
    if args.data or args.text_file:
        raise MinigptError("--tasks brings its own data; leave out --data and --text-file")
    from .eval.harness import run_eval_tasks  # lm_eval loads only here

    run_eval_tasks(
        args.path,
        [t.strip() for t in args.tasks.split(",") if t.strip()],
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        include_path=args.include_path,
        as_json=args.json,
        latest=args.latest,
        device=args.device,
        quantize=args.quantize,
    )


def _export(args):
    from .formats.export import export

    for path in export(args.path, args.format, args.out, outtype=args.outtype, latest=args.latest):
        print(f"wrote {path}")


def _attention(args):
    from .eval.viz import run_attention

    run_attention(
        args.path, args.prompt, args.out, layer=args.layer, head=args.head, latest=args.latest, replace=args.force
    )


def _plot(args):
    from .eval.viz import plot_losses

    path = plot_losses(args.runs, args.out, x=args.x, replace=args.force)
    print(f"wrote {path}")


def _bench(args):
    from .bench.suite import run_bench

    run_bench(
        args.config,
        quick=args.quick,
        text=args.text,
        json_path=args.json,
        finetune=args.finetune,
        serve=args.serve,
        nanogpt=args.nanogpt,
        budgets=args.budgets,
        llama_cpp=args.llama_cpp,
        speculative=args.speculative,
        draft=args.draft,
    )


def _import_whole(*modules: str) -> None:
    """Import the big libraries with Ctrl-C deferred. A KeyboardInterrupt raised in the middle of numpy's
    or torch's own import can leave it half initialised, and what follows is a confusing traceback. So
    while they import, Ctrl-C is only recorded, then raised as a clean KeyboardInterrupt once they are in.
    (A handler, not a blocked signal mask: full test runs saw a masked Ctrl-C in start-up go unnoticed.)"""
    import importlib
    import threading

    deferring = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True)) if deferring else None
    try:
        for module in modules:
            importlib.import_module(module)
    finally:
        if deferring:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if interrupted:
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "train" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra  # key=value after a flag (`train CONFIG --resume train.max_steps=250`)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        _import_whole("numpy", *(() if args.command == "prepare" else ("torch",)))  # prepare needs no torch
        if "threads" in args:  # sample, chat, serve, eval: before any work (train reads its config's)
            from .device import set_threads

            args.threads = set_threads(args.threads)  # None: none asked for (generation measures)
        args.run(args)
    except MinigptError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
