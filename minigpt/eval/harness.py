"""Standard benchmarks through lm-evaluation-harness: `minigpt eval PATH --tasks hellaswag,arc_easy`.

    model, tokenizer, _ = load_model("out/run")
    results = run_tasks(model, tokenizer, ["hellaswag"], limit=100)
    print(results_table(results))

lm-eval asks a model three things, and MinigptLM answers them with minigpt's own model:
    loglikelihood          log P(continuation | context) and whether greedy decoding would write it
    loglikelihood_rolling  log P(text) of a whole text, in block_size windows (perplexity tasks)
    generate_until         greedy (or sampled) text up to a stop string, on the generation engine
Requests run in batches: scoring pads rows on the right (a causal model's earlier positions never
see the padding); generation runs batch_size sequences at a time through the engine, as the server does.

This module imports lm_eval (the optional `eval` extra) on import: only `eval --tasks` loads it.
"""

import difflib
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import MinigptError, first_line
from ..infer.engine import Engine
from ..infer.sample import document_start
from ..infer.sampling import SamplingParams

try:
    from lm_eval.api.model import TemplateLM
except ImportError:
    raise MinigptError(
        "standard evaluations need lm-evaluation-harness: pip install 'minigpt[eval]' (or lm-eval)"
    ) from None


class MinigptLM(TemplateLM):
    """A minigpt GPT and tokenizer as an lm-eval model."""

    def __init__(self, model, tokenizer, *, batch_size: int = 8, device: torch.device | str = "cpu"):
        super().__init__()
        self.model = model.eval()
        self.minigpt_tokenizer = tokenizer
        self.batch_size = batch_size
        self.run_device = torch.device(device)
        self.max_length = model.config.block_size

    @property
    def eot_token_id(self) -> int:
        # an empty context is scored after this token: end-of-text, or what starts a document without one
        return document_start(self.minigpt_tokenizer)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.minigpt_tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.minigpt_tokenizer.decode(tokens)

    # ---- scoring -----------------------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """For each (key, context ids, continuation ids): summed log-prob of the continuation, and whether
        every continuation token is the argmax. The text is cut on the left to block_size + 1 tokens."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        # longest first, so each batch pads little and the slowest batch shows up first
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in tqdm(batches, desc="loglikelihood", disable=disable_tqdm):
            rows = []
            for i in batch:
                _, context, continuation = requests[i]
                ids = (context + continuation)[-(self.max_length + 1) :][:-1]
                rows.append((ids, continuation))
            width = max(len(ids) for ids, _ in rows)
            inputs = torch.zeros((len(rows), width), dtype=torch.long)
            for r, (ids, _) in enumerate(rows):
                inputs[r, : len(ids)] = torch.tensor(ids)
            with torch.inference_mode():
                logprobs = F.log_softmax(self.model(inputs.to(self.run_device))[0].float(), dim=-1).cpu()
            for r, (i, (ids, continuation)) in enumerate(zip(batch, rows)):
                n = len(continuation)
                scores = logprobs[r, len(ids) - n : len(ids)]  # the positions that predict the continuation
                target = torch.tensor(continuation)
                total = scores.gather(-1, target[:, None]).sum().item()
                results[i] = (total, bool((scores.argmax(dim=-1) == target).all()))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owners = [], []
        for r, (text,) in enumerate(req.args for req in requests):
            for context, continuation in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, context, continuation))
                owners.append(r)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[owner] += logprob
        return totals

    # ---- generation --------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Every request as one sequence on the engine, batch_size at a time; each ends at its own stops."""
        engine = Engine(
            self.model,
            self.minigpt_tokenizer,
            max_batch=self.batch_size,
            max_waiting=len(requests) + 1,
            device=self.run_device,
        )
        sequences = []
        for context, gen_kwargs in (req.args for req in requests):
            params = _sampling_params(gen_kwargs)
            # keep room for the answer; an empty context starts a document, as in scoring
            prompt = self.tok_encode(context)[-max(1, self.max_length - params.max_tokens) :] or [self.eot_token_id]
            sequences.append(engine.submit(prompt, params))
        with tqdm(total=len(sequences), desc="generate_until", disable=disable_tqdm) as bar:
            for _ in engine.drive(sequences):
                bar.update(sum(s.finish_reason is not None for s in sequences) - bar.n)
        failed = [s.error for s in sequences if s.finish_reason == "error"]
        if failed:
            raise MinigptError(f"generation failed: {failed[0]}")
        return [s.text.text for s in sequences]


def _sampling_params(gen_kwargs: dict) -> SamplingParams:
    """A task's generation arguments as SamplingParams: its stop strings (`until`), max_gen_toks and,
    with do_sample, its temperature (greedy otherwise); end-of-text ends a sequence as always."""
    kwargs = dict(gen_kwargs)
    until = kwargs.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
    return SamplingParams(
        max_tokens=int(kwargs.pop("max_gen_toks", 256)), temperature=temperature, stop=until, on_full="slide"
    )


# ---- running tasks ---------------------------------------------------------------------------------


def run_tasks(
    model,
    tokenizer,
    tasks: list[str],
    *,
    limit: float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    include_path: str | None = None,
) -> dict:
    """Run lm-eval tasks (names or groups; include_path adds a folder of task YAML files) on a model.

    limit caps the examples per task (a fraction of them when below 1). Returns lm-eval's results
    dict: "results" maps each task to its metrics.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise MinigptError("--tasks needs at least one task name, e.g. hellaswag,arc_easy")
    if limit is not None and limit <= 0:
        raise MinigptError(f"--limit must be positive, got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise MinigptError(f"--num-fewshot must be 0 or more, got {num_fewshot}")
    if include_path is not None and not Path(include_path).is_dir():
        missing = "does not exist" if not Path(include_path).exists() else "is not a folder"
        raise MinigptError(f"--include-path {include_path} {missing}; give a folder of task YAML files")
    # lm-eval's own index of its thousands of tasks takes tens of seconds: skip it when the folder has them all
    manager = TaskManager(include_path=include_path, include_defaults=False) if include_path else None
    if manager is None or not set(tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=include_path)
    known = set(manager.all_tasks)
    for task in tasks:
        if task not in known:
            close = difflib.get_close_matches(task, known, n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else "see `lm_eval ls tasks` for the names"
            raise MinigptError(f"unknown task {task!r}; {hint}")
    return simple_evaluate(
        model=MinigptLM(model, tokenizer, batch_size=batch_size, device=device),
        tasks=[built for task in tasks for built in _load_task(manager, task)],
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=False,
    )


def _load_task(manager, name: str) -> list:
    """A task, group or tag, built (its data read or downloaded here), and its rows' answers checked.

    Built before simple_evaluate, which takes the built objects, so that data that is missing or out
    of reach is one line naming the task, not a traceback from deep inside lm-eval or datasets.
    """
    import datasets

    # datasets' bars ("Generating test split") would stand on stderr above a one-line error
    quiet = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        loaded = manager.load(name)
        for task_name, task in loaded["tasks"].items():
            _check_answers(task_name, task)
    except ConnectionError:  # datasets' offline mode and an unreachable Hub alike
        raise MinigptError(
            f"the data of task {name!r} could not be downloaded; it needs the network once (then it is "
            "cached), or give a task of your own with local data files through --include-path"
        ) from None
    except FileNotFoundError as e:
        raise MinigptError(f"a data file of task {name!r} is missing ({first_line(e)}); check its YAML") from None
    finally:
        if not quiet:
            datasets.enable_progress_bars()
    group = loaded["groups"].get(name)
    return [group] if group is not None else list(loaded["tasks"].values())  # a task, or a tag's tasks


def _check_answers(name: str, task) -> None:
    """Every row's answer of a multiple-choice task must be one of its choices: lm-eval scores an
    index past the end as wrong (with a warning) and fails on a negative one with an IndexError."""
    if task.OUTPUT_TYPE != "multiple_choice":
        return
    for row, doc in enumerate(task.eval_docs, start=1):
        # as lm-eval reads the gold: from doc_to_text in tasks whose choices are contexts (winogrande)
        answers = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
        choices = task.doc_to_choice(doc)
        for answer in answers if isinstance(answers, list) else [answers]:
            if isinstance(answer, int) and not 0 <= answer < len(choices):
                problem = f"the answer index {answer} is out of range for its {len(choices)} choices"
            elif isinstance(answer, str) and answer not in choices:
                problem = f"the answer {answer!r} is not one of its {len(choices)} choices"
            else:
                continue
            raise MinigptError(f"task {name!r}, row {row}: {problem}; fix the task's data")


def results_table(results: dict) -> str:
    """lm-eval's own table of every task's metrics (markdown)."""
    from lm_eval.utils import make_table

    return make_table(results)


def run_eval_tasks(
    path: str,
    tasks: list[str],
    *,
    limit: float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    include_path: str | None = None,
    as_json: bool = False,
    latest: bool = False,
    device: str = "auto",
    quantize: str | None = None,
) -> None:
    """`minigpt eval PATH --tasks ...`: the tasks' metrics as a table, or as JSON with as_json.
    limit: examples per task (a number of at least 1), or a share of each task (below 1)."""
    import json

    from ..device import resolve_device
    from ..loader import load_model

    torch_device = resolve_device(device)
    model, tokenizer, _ = load_model(path, latest=latest, device=torch_device, quantize=quantize)
    results = run_tasks(
        model,
        tokenizer,
        tasks,
        limit=int(limit) if limit is not None and limit >= 1 else limit,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        device=torch_device,
        include_path=include_path,
    )
    print(json.dumps(results["results"], default=str) if as_json else results_table(results))
