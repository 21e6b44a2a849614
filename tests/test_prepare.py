import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken

from minigpt.data import prepare as prepare_module
from minigpt.data.prepare import SAFE_CUT, _pieces, prepare
from minigpt.errors import MinigptError
from minigpt.tokenizers import load_tokenizer

pytestmark = pytest.mark.usefixtures("no_network")


def read_split(out, split, meta):
    return np.fromfile(out / f"{split}.bin", dtype=meta["dtype"])


def assert_nothing_written(out):
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


@pytest.fixture
def folder(tmp_path):
    """A small mixed corpus: two text files, a markdown file, jsonl and parquet rows."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("First file.\nIt has two lines.\n")
    (root / "b.md").write_text("# Title\n\nSome *markdown* text, naïve café 🙂.\n")
    (root / "sub" / "c.txt").write_text("A third document, in a subfolder.\n")
    rows = [{"text": f"json row {i}: the quick brown fox", "id": i} for i in range(4)]
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.table({"text": ["parquet row one", "parquet row two"], "n": [1, 2]}), root / "e.parquet")
    (root / "notes.csv").write_text("ignored,file\n")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.txt").write_text("ignored hidden file\n")
    return root


def test_shakespeare_char(tmp_path, shakespeare_text):
    out = tmp_path / "sc"
    meta = prepare("shakespeare", "char", out, num_proc=2, progress=False)
    assert meta["vocab_size"] == 65 and meta["eot_token"] is None and meta["dtype"] == "uint16"
    assert meta["train_tokens"] + meta["val_tokens"] == 1_115_394
    assert meta["train_bytes"] + meta["val_bytes"] == len(shakespeare_text.encode())
    assert meta["documents"] == 1
    assert json.loads((out / "meta.json").read_text()) == meta
    assert sorted(p.name for p in out.iterdir()) == ["char_vocab.json", "meta.json", "train.bin", "val.bin"]
    tok = load_tokenizer(meta["tokenizer"], out)
    train, val = tok.decode(read_split(out, "train", meta)), tok.decode(read_split(out, "val", meta))
    cut = int(len(shakespeare_text) * 0.9)  # the last 10% of the text is val
    assert (train, val) == (shakespeare_text[:cut], shakespeare_text[cut:])


def test_shakespeare_gpt2_matches_tiktoken(tmp_path, shakespeare_text):
    out = tmp_path / "sg"
    meta = prepare("shakespeare", "gpt2", out, num_proc=2, progress=False)
    enc = tiktoken.get_encoding("r50k_base")
    cut = int(len(shakespeare_text) * 0.9)
    assert read_split(out, "train", meta).tolist() == enc.encode_ordinary(shakespeare_text[:cut])
    assert read_split(out, "val", meta).tolist() == enc.encode_ordinary(shakespeare_text[cut:])
    assert meta["vocab_size"] == 50257 and meta["eot_token"] == 50256


@pytest.mark.parametrize("encoding", ["r50k_base", "cl100k_base"])
def test_cutting_into_pieces_changes_no_token(shakespeare_text, encoding):
    enc = tiktoken.get_encoding(encoding)
    pieces = _pieces(shakespeare_text)
    assert len(pieces) > 5 and "".join(pieces) == shakespeare_text
    assert [t for p in pieces for t in enc.encode_ordinary(p)] == enc.encode_ordinary(shakespeare_text)
    assert SAFE_CUT.search("word\nNext").start() == 5
    # Whitespace before the newline or a blank line would merge differently when cut.
    assert SAFE_CUT.search("word \nNext") is None and SAFE_CUT.search("word\n\nNext") is None


def test_folder_of_mixed_files(tmp_path, folder):
    out = tmp_path / "mixed"
    meta = prepare(str(folder), "gpt2", out, val_fraction=0.5, num_proc=2, progress=False)
    docs = [
        (folder / "a.txt").read_text(),
        (folder / "b.md").read_text(),
        *[f"json row {i}: the quick brown fox" for i in range(4)],
        "parquet row one",
        "parquet row two",
        (folder / "sub" / "c.txt").read_text(),
    ]
    assert meta["documents"] == len(docs) == 9
    enc = tiktoken.get_encoding("r50k_base")
    expected = {"train": [], "val": []}
    for i, doc in enumerate(docs):  # every second document goes to val for 0.5
        expected["val" if i % 2 else "train"] += enc.encode_ordinary(doc) + [enc.eot_token]
    for split in ("train", "val"):
        assert read_split(out, split, meta).tolist() == expected[split]
    assert meta["train_bytes"] + meta["val_bytes"] == sum(len(d.encode()) for d in docs)


def test_glob_and_single_jsonl_with_char(tmp_path, folder):
    meta = prepare(str(folder / "*.jsonl"), "char", tmp_path / "g", val_fraction=0.25, num_proc=1, progress=False)
    assert meta["documents"] == 4 and meta["eot_token"] == meta["vocab_size"] - 1
    tok = load_tokenizer("char", tmp_path / "g")
    val = tok.decode(read_split(tmp_path / "g", "val", meta))
    assert val == "json row 3: the quick brown fox<|endoftext|>"


def test_pydocs_offline_and_deterministic(tmp_path):
    first = prepare("pydocs", "gpt2", tmp_path / "p1", max_chars=200_000, num_proc=2, progress=False)
    second = prepare("pydocs", "gpt2", tmp_path / "p2", max_chars=200_000, num_proc=1, progress=False)
    assert first["train_bytes"] + first["val_bytes"] >= 200_000 and first["documents"] > 20
    assert 0 < first["val_tokens"] < first["train_tokens"]
    assert {k: v for k, v in first.items() if k != "created"} == {k: v for k, v in second.items() if k != "created"}
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "p1" / name).read_bytes() == (tmp_path / "p2" / name).read_bytes()


def test_trained_bpe_is_saved_with_the_data(tmp_path, folder):
    meta = prepare(str(folder), "bpe:300", tmp_path / "b", val_fraction=0.5, num_proc=1, progress=False)
    assert meta["tokenizer_files"] == ["bpe.tiktoken"] and meta["vocab_size"] <= 300
    tok = load_tokenizer("bpe:300", tmp_path / "b")
    text = tok.decode(read_split(tmp_path / "b", "train", meta))
    assert text.startswith("First file.\nIt has two lines.\n<|endoftext|>")


def test_invalid_utf8_is_replaced_with_a_warning(tmp_path, capsys):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"valid text " + b"\xff\xfe" + b" more valid text\n" * 20)
    meta = prepare(str(src), "char", tmp_path / "o", progress=False, num_proc=1)
    assert meta["invalid_utf8_bytes"] == 2
    assert "warning: 2 bytes that are not UTF-8 were replaced" in capsys.readouterr().err
    tok = load_tokenizer("char", tmp_path / "o")
    assert tok.decode(read_split(tmp_path / "o", "train", meta)).startswith("valid text \ufffd\ufffd more")


@pytest.mark.parametrize(
    "source, tokenizer, options, message",
    [
        ("missing/file.txt", "char", {}, "source 'missing/file.txt' not found"),
        ("TYPO", "char", {}, "source '.*two_docs' not found"),  # an existing folder/typo is no Hub name
        ("EMPTY", "char", {}, "no text found"),
        ("GOOD", "wordpiece", {}, "unknown tokenizer 'wordpiece'; accepted: char, gpt2"),
        ("GOOD", "char", {"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ("GOOD", "char", {"val_fraction": -0.1}, r"val_fraction must be in \[0, 1\)"),
        ("JSONL", "char", {}, r"column 'text' does not exist; columns: 'content' \(str\), 'id' \(int\)"),
        ("JSONL", "char", {"text_column": "id"}, r"rows.jsonl row 1: column 'id' holds 1 \(int\), not text"),
        ("BAD_JSONL", "char", {}, "bad.jsonl as json: JSON parse error"),
        ("JSONL", "char", {"val_fraction": 0.1}, None),  # control: works with the right column
        ("TWO_DOCS", "char", {"val_fraction": 0.1}, "the val split is empty"),
        ("roneneldan/TinyStories", "gpt2", {}, "cannot reach the Hugging Face Hub.*HF_DATASETS_OFFLINE"),
        ("GOOD", "char", {"num_proc": 0}, "num_proc must be"),
    ],
)
def test_bad_input_writes_nothing(tmp_path, source, tokenizer, options, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "good.txt").write_text("some text\n" * 10)
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "1.txt").write_text("one")
    (tmp_path / "two" / "2.txt").write_text("two")
    (tmp_path / "rows.jsonl").write_text('{"content": "a row", "id": 1}\n' * 20)
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{broken\n')
    paths = {"EMPTY": "empty.txt", "GOOD": "good.txt", "JSONL": "rows.jsonl", "BAD_JSONL": "bad.jsonl"}
    paths |= {"TWO_DOCS": "two", "TYPO": "two_docs"}
    source = str(tmp_path / paths[source]) if source in paths else source
    out = tmp_path / "new" / "out"
    if message is None:
        prepare(source, tokenizer, out, text_column="content", progress=False, num_proc=1, **options)
        assert (out / "meta.json").is_file()
        return
    with pytest.raises(MinigptError, match=message) as info:
        prepare(source, tokenizer, out, progress=False, **{"num_proc": 1, **options})
    assert "\n" not in str(info.value)
    assert_nothing_written(tmp_path / "new")


def test_existing_data_is_never_overwritten(tmp_path):
    src = tmp_path / "good.txt"
    src.write_text("some text\n" * 10)
    out = tmp_path / "out"
    prepare(str(src), "char", out, progress=False, num_proc=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    src.write_text("different text\n" * 10)
    with pytest.raises(MinigptError, match="already holds prepared data.*choose another --out or delete it"):
        prepare(str(src), "char", out, progress=False, num_proc=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_prepare_leaves_nothing_complete(tmp_path, monkeypatch, error):
    out = tmp_path / "out"
    out.mkdir()  # an existing (empty) folder must survive, without our files
    real_encode, calls = prepare_module._encode_job, []

    def failing(job):
        calls.append(job)
        if len(calls) == 3:
            raise error("stopped midway")
        return real_encode(job)

    monkeypatch.setattr(prepare_module, "_encode_job", failing)
    with pytest.raises(error):
        prepare("shakespeare", "char", out, num_proc=1, progress=False)
    assert out.is_dir() and list(out.iterdir()) == []
    monkeypatch.setattr(prepare_module, "_encode_job", real_encode)
    meta = prepare("shakespeare", "char", out, num_proc=1, progress=False)
    assert meta["train_tokens"] + meta["val_tokens"] == 1_115_394


def test_rerun_after_a_killed_run(tmp_path):
    """A run killed hard leaves only its staging folder, which the next run replaces."""
    src = tmp_path / "good.txt"
    src.write_text("some text\n" * 10)
    out = tmp_path / "out"
    (out / prepare_module.STAGING).mkdir(parents=True)
    (out / prepare_module.STAGING / "train.bin").write_bytes(b"partial")
    prepare(str(src), "char", out, num_proc=1, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["char_vocab.json", "meta.json", "train.bin", "val.bin"]


def test_shakespeare_is_offline_and_is_the_shipped_text(tmp_path, monkeypatch, shakespeare_text):
    """`prepare shakespeare` never touches the network: the text ships inside the package."""

    def no_network(*args, **kwargs):
        raise AssertionError("prepare shakespeare tried the network")

    monkeypatch.setenv("HOME", str(tmp_path))  # a fresh machine: nothing cached
    monkeypatch.setattr("urllib.request.urlopen", no_network)
    monkeypatch.setattr("socket.create_connection", no_network)
    meta = prepare("shakespeare", "char", tmp_path / "out", progress=False)
    assert meta["train_tokens"] + meta["val_tokens"] == len(shakespeare_text)


def test_throughput_measurement_runs(tmp_path, shakespeare_text):
    from minigpt.bench.data import measure_prepare_throughput

    src = tmp_path / "small.txt"
    src.write_text(shakespeare_text[:100_000])
    result = measure_prepare_throughput(src, "gpt2", num_proc=1)
    assert result["documents"] == 1 and result["megabytes"] == pytest.approx(0.1, rel=0.01)
    assert all(result[k] > 0 for k in ("bare_mb_s", "bare_threads_mb_s", "prepare_mb_s", "ratio", "cpu_efficiency"))


@pytest.mark.parametrize(
    "rows, message",
    [
        (['{"text": "fine"}', '{"text": 42}'], "b.jsonl row 2: column 'text' holds 42 (int), not text"),
        (
            ['{"text": "fine"}', '{"text": ["a", "b"]}'],
            "b.jsonl row 2: column 'text' holds ['a', 'b'] (list), not text",
        ),
    ],
    ids=["number", "list"],
)
def test_a_row_whose_text_is_no_string_is_named(tmp_path, rows, message):
    """In the second file of a folder: read together, `datasets` would have turned it into quoted JSON text."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.jsonl").write_text('{"text": "first file"}\n')
    (tmp_path / "corpus" / "b.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(MinigptError) as info:
        prepare(str(tmp_path / "corpus"), "char", tmp_path / "out", progress=False, num_proc=1)
    assert str(info.value).startswith(str(tmp_path / "corpus")) and message in str(info.value)
    assert "\n" not in str(info.value) and "--text-column" in str(info.value)
    assert_nothing_written(tmp_path / "out")


def test_rows_without_text_are_counted_and_summarised(tmp_path):
    rows = ['{"text": "one row"}', '{"text": null}', '{"id": 3}', '{"text": ""}', '{"text": "two rows"}']
    (tmp_path / "rows.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    meta = prepare(str(tmp_path / "rows.jsonl"), "char", out, val_fraction=0.5, progress=False, num_proc=1)
    assert meta["documents"] == 2 and meta["dropped_documents"] == {"no_text": 2, "empty": 1}
    text = prepare_module.summary(meta, out)
    assert f"prepared {out}: 5 documents read, 3 dropped (2 with null or missing text, 1 empty)" in text
    assert f"vocabulary {meta['vocab_size']} (char)" in text
    assert f"train {meta['train_tokens']} tokens, val {meta['val_tokens']} tokens" in text


def test_val_fraction_counts_documents_and_the_summary_says_how_much_text(tmp_path):
    (tmp_path / "docs").mkdir()
    for i in range(4):  # a long document, then a short one, twice: the odd ones (short) go to val
        (tmp_path / "docs" / f"{i}.txt").write_text("long document text " * 50 if i % 2 == 0 else "short")
    meta = prepare(str(tmp_path / "docs"), "char", tmp_path / "out", val_fraction=0.5, progress=False, num_proc=1)
    assert meta["val_bytes"] == 10 and meta["train_bytes"] == 2 * 19 * 50
    assert "(0.5 of the documents, 0.5% of the text)" in prepare_module.summary(meta, tmp_path / "out")


def test_the_summary_of_one_document_says_the_last_share_of_the_text(tmp_path):
    (tmp_path / "one.txt").write_text("some text\n" * 50)
    meta = prepare(str(tmp_path / "one.txt"), "char", tmp_path / "out", progress=False, num_proc=1)
    text = prepare_module.summary(meta, tmp_path / "out")
    assert "1 document read;" in text and "(the last 10% of the text)" in text and "dropped" not in text


def test_help_says_val_fraction_counts_documents():
    from minigpt.cli import build_parser

    prepare_parser = build_parser()._subparsers._group_actions[0].choices["prepare"]
    assert "whole documents" in prepare_parser.format_help()


def test_text_column_for_plain_text_files_is_ignored_with_a_note(tmp_path, capsys):
    (tmp_path / "one.txt").write_text("some text\n" * 50)
    meta = prepare(str(tmp_path / "one.txt"), "char", tmp_path / "out", text_column="body", progress=False, num_proc=1)
    err = capsys.readouterr().err
    assert "note: --text-column body is ignored" in err and meta["text_column"] is None
    prepare(str(tmp_path / "one.txt"), "char", tmp_path / "out2", progress=False, num_proc=1)
    assert "--text-column" not in capsys.readouterr().err  # not named: no note
