"""The record of a run: what a checkpoint's meta.json holds, as one typed object with one owner.

train writes it; sample, eval, chat, serve, export and resume read it. Everything in it is plain
JSON: the tensors of a checkpoint (weights, optimizer, RNG states) live in the files beside it.

    record = RunRecord.from_json(path.read_text())
    record.step, record.config.model.vocab_size, record.tokenizer, record.data_dir

`format` says which layout wrote the file. Format 1 is the untyped dict of minigpt 0.1's first
release (it had no `format` key); it is read into the same record, so old checkpoints still load.
"""

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from .config import RunConfig, config_from_dict
from .errors import MinigptError

FORMAT = 2


@dataclass
class RunRecord:
    step: int  # optimizer steps taken
    config: RunConfig  # the whole run config; config.model.vocab_size is the model's vocabulary
    tokenizer: str  # the tokenizer's spec; its files are saved beside the record
    data: dict = field(default_factory=dict)  # the data folder's meta.json (token counts, dtype, ...)
    elapsed: float = 0.0  # wall-clock seconds of training, carried across resumes
    val_loss: float | None = None  # this checkpoint's val loss
    best_val_loss: float | None = None  # the lowest val loss of the run so far
    world_size: int = 1  # processes that trained it: a resume must use as many
    loader: list[dict] = field(default_factory=list)  # each process's batch loader position
    dtype: str | None = None  # the precision it trained in (what dtype=auto chose): a resume keeps it
    base: dict | None = None  # train.init_from pinned when the run began: path, sha256 (loader.base_pin)
    minigpt_version: str = __version__
    format: int = FORMAT

    @property
    def data_dir(self) -> str | None:
        return self.config.data.dir or None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, source: Path | str = "meta.json") -> "RunRecord":
        values = json.loads(text)
        if not isinstance(values, dict) or "config" not in values or "tokenizer" not in values:
            raise MinigptError(f"{source} is not a minigpt run record (no config or tokenizer)")
        version = values.pop("format", 1)
        if version > FORMAT:
            raise MinigptError(
                f"{source} was written by a newer minigpt (record format {version}; this one reads up to "
                f"{FORMAT}); upgrade minigpt"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        values["config"] = config_from_dict(values["config"], source)
        return cls(**values, format=version)
