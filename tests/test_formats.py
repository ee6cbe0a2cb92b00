"""Every output format, loaded back with its consumer's own code where that installs (Hugging Face
``datasets``), and checked for the keys JumpStart, TRL and Bedrock read. Splits: stratified, grouped,
deterministic, and reported in the manifest."""

from __future__ import annotations

import inspect
import io
import json
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.formats import chunk_text, output_format
from curation.pipeline import RunResult, run_recipe
from curation.published import read_manifest, verify_checksums
from curation.split import Splitter
from curation.writer import DatasetWriter
from schemas.config import RecipeError, load_recipe
from schemas.records import source_array
from tests.helpers import lineage_rows, outputs, read_lines, seed_placing_group, write_jsonl, write_recipe


def run_fresh(folder: Path, recipe: dict[str, Any]) -> RunResult:
    """Run a recipe; a rerun over the same input reprocesses it (incremental runs switched off)."""
    loaded = load_recipe(write_recipe(folder, recipe))
    if "full_refresh" in inspect.signature(run_recipe).parameters:
        return run_recipe(loaded, full_refresh=True)
    return run_recipe(loaded)


def split_files(version: Path, pattern: str = "*.jsonl") -> dict[str, list[str]]:
    return {split: sorted(str(p) for p in (version / split).glob(pattern)) for split in ("train", "validation")}


def load_json_splits(version: Path) -> datasets.DatasetDict:
    return datasets.load_dataset("json", data_files={k: v for k, v in split_files(version).items() if v})


def instructions(folder: Path, count: int = 40) -> Path:
    rows = [
        {"q": f"What is {i} plus {i}?", "a": f"{2 * i}", "topic": "math" if i % 4 else "trivia"} for i in range(count)
    ]
    return write_jsonl(folder / "input" / "pairs.jsonl", rows)


def instruction_recipe(folder: Path, fmt: str, **output: Any) -> dict[str, Any]:
    return {
        "dataset": "pairs",
        "sources": [{"path": str(instructions(folder))}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a", "label": "topic"},
        "output": {"dest": str(folder / "out"), "format": fmt, "validation_fraction": 0.25, **output},
    }


def test_text_format_loads_with_datasets_and_chunks_documents(workdir: Path) -> None:
    words = [f"word{i:03d}" for i in range(120)]
    docs = [" ".join(words), "short document", "Zürich café ☕ " * 3] + [f"filler {i} " * 12 for i in range(20)]
    write_jsonl(workdir / "docs.jsonl", [{"body": d} for d in docs])
    recipe = {
        "dataset": "docs",
        "sources": [{"path": str(workdir / "docs.jsonl")}],
        "record": {"kind": "document", "text": "body"},
        "output": {
            "dest": str(workdir / "out"),
            "format": "text",
            "chunk_chars": 100,
            "validation_fraction": 0.0,
            "shard_max_bytes": 1024,
        },
    }
    version = Path(run_fresh(workdir, recipe).version_uri)
    loaded = load_json_splits(version)
    assert loaded["train"].column_names == ["text"]  # the key JumpStart domain adaptation reads
    # JumpStart domain adaptation reads one file per channel: one file, shard_max_bytes notwithstanding.
    assert len(list((version / "train").glob("*.jsonl"))) == 1
    lines = loaded["train"]["text"]
    assert all(len(line) <= 100 for line in lines)
    # The long document became several chunks that together hold every word, in order.
    long_chunks = [line for line in lines if line.startswith("word") or " word" in line]
    assert " ".join(long_chunks).split() == words
    assert "short document" in lines and "Zürich café ☕ Zürich café ☕ Zürich café ☕ " in lines
    # Lineage: each line traces back to its document; chunking does not change the record count.
    manifest = read_manifest(str(version))
    assert manifest.counts.written == 23 and manifest.splits["train"].records == len(lines)
    lineage = lineage_rows(version)
    assert len(lineage) == len(lines) and len({row["id"] for row in lineage}) == 23
    # The run's summary counts records per side, as it counts the input, and names the pieces apart.
    from rich.console import Console

    from curation.cli import summary_table

    console = Console(width=120, record=True)
    console.print(summary_table(manifest, pieces=True))
    written = [line.split("│") for line in console.export_text().splitlines() if "│ written" in line]
    assert [[cell.strip() for cell in row[2:4]] for row in written] == [
        ["train", f"23 ({len(lines)} pieces)"],
        ["validation", "0 (0 pieces)"],
    ]


def test_chunk_text_cuts_at_whitespace_and_never_drops_text() -> None:
    assert chunk_text("aaaa bbbb cccc", 9) == ["aaaa", "bbbb cccc"]
    assert chunk_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]
    assert chunk_text("short", 10) == ["short"]


def test_chunk_text_cuts_a_word_without_spaces_between_characters_not_inside_one() -> None:
    # With no space to cut at, a piece was cut at the limit: between a letter and its accent (the next piece
    # began with a lone combining mark) or inside an emoji (half a flag, a family split at a joiner).
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # man ZWJ woman ZWJ girl: one emoji
    for word, size, limit in [
        ("cafe\u0301" * 30, 1, 52),  # cut anywhere but before the accent
        ("\U0001f1eb\U0001f1f7" * 20, 2, 7),  # French flags: two regional indicators each
        (family * 10, 5, 12),
        ("\u0915\u094d\u0937" * 20, 3, 10),  # Devanagari "ksha", a conjunct of three code points
    ]:
        pieces = chunk_text(word, limit)
        assert "".join(pieces) == word and all(len(piece) <= limit for piece in pieces)
        assert all(len(piece) % size == 0 for piece in pieces), (word[:size], [len(piece) for piece in pieces])
        assert not any(unicodedata.combining(piece[0]) for piece in pieces)
    assert chunk_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]


def test_chunk_text_keeps_paragraphs_and_names_whole_as_the_documents_chunker_does() -> None:
    # Cut at the last space before the limit, a piece ended one paragraph's first word in and the
    # next began mid-sentence; a name was cut between its words where another space would do.
    text = "The refund was sent on Monday.\n\nSecond paragraph, on its own.\n\nAsk Maria Garcia."
    assert chunk_text(text, 40) == [
        "The refund was sent on Monday.",
        "Second paragraph, on its own.",
        "Ask Maria Garcia.",
    ]
    assert chunk_text("Please call back Daniel Okafor today", 30) == ["Please call back", "Daniel Okafor today"]


def test_jumpstart_instruction_format_fills_its_template(workdir: Path) -> None:
    version = Path(run_fresh(workdir, instruction_recipe(workdir, "jumpstart-instruction")).version_uri)
    loaded = load_json_splits(version)
    for split in ("train", "validation"):
        # JumpStart reads template.json beside the data and fills its placeholders from each line.
        template = json.loads((version / split / "template.json").read_text())
        for row in loaded[split]:
            assert template["prompt"].format(**row).startswith("What is ")
            assert template["completion"].format(**row) == row["completion"]
    assert len(loaded["train"]) + len(loaded["validation"]) == 40


def test_jumpstart_chat_format_is_the_dialog_convention(workdir: Path) -> None:
    recipe = instruction_recipe(workdir, "jumpstart-chat", system_prompt="You are a careful calculator.")
    version = Path(run_fresh(workdir, recipe).version_uri)
    loaded = load_json_splits(version)
    assert loaded["train"].column_names == ["dialog"]
    first = loaded["train"][0]["dialog"]
    assert [turn["role"] for turn in first] == ["system", "user", "assistant"]
    assert first[0]["content"] == "You are a careful calculator."
    assert first[1]["content"].startswith("What is ") and first[2]["content"].isdigit()
    # Each turn is written content first, role second, as the JumpStart examples show.
    raw = (version / "train" / "part-00000.jsonl").read_text().splitlines()[0]
    assert raw.startswith('{"dialog":[{"content":')


def is_conversational(example: dict[str, Any]) -> bool:
    """TRL's rule (trl/data_utils.py ``is_conversational``; TRL itself needs torch, too heavy to install for a
    test): a supported key whose value is a list whose first item is a dict with ``role`` and ``content``."""
    for key in ("prompt", "chosen", "rejected", "completion", "messages"):
        value = example.get(key)
        if isinstance(value, list) and value and isinstance(value[0], dict) and {"role", "content"} <= set(value[0]):
            return True
    return False


def test_messages_format_is_openai_and_trl_conversational(workdir: Path) -> None:
    version = Path(run_fresh(workdir, instruction_recipe(workdir, "messages")).version_uri)
    loaded = load_json_splits(version)
    assert loaded["train"].column_names == ["messages"]
    for row in loaded["train"]:
        assert is_conversational(row)
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert set(row["messages"][0]) == {"role", "content"}
    # No system prompt set: no system turn, and no empty one either.
    assert all(len(row["messages"]) == 2 for row in loaded["validation"])


def test_bedrock_conversation_format(workdir: Path) -> None:
    recipe = instruction_recipe(workdir, "bedrock-conversation", system_prompt="Answer with a number.")
    version = Path(run_fresh(workdir, recipe).version_uri)
    loaded = load_json_splits(version)
    rows = outputs(version)
    assert len(loaded["train"]) + len(loaded["validation"]) == len(rows) == 40
    for row in rows:
        assert row["schemaVersion"] == "bedrock-conversation-2024"
        assert row["system"] == [{"text": "Answer with a number."}]
        user, assistant = row["messages"]
        assert user["role"] == "user" and user["content"][0]["text"].startswith("What is ")
        assert assistant["role"] == "assistant" and assistant["content"][0]["text"].isdigit()
    assert read_manifest(str(version)).row_schema["properties"]["schemaVersion"] == {
        "const": "bedrock-conversation-2024"
    }


def png(color: tuple[int, int, int], size: tuple[int, int] = (12, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_jumpstart_vqa_layout_loads_as_an_imagefolder(workdir: Path) -> None:
    # An image's questions go to one side, by a hash of its bytes: with 16 images at 0.5 both sides hold some
    # whatever bytes this Pillow writes (one side empty: 2 in 65,536).
    colors = {f"c{n}.png": (16 * n, 255 - 16 * n, 7 * n) for n in range(16)}
    for name, color in colors.items():
        (workdir / "scans").mkdir(exist_ok=True)
        (workdir / "scans" / name).write_bytes(png(color))
    rows = [
        {"image": str(workdir / "scans" / name), "question": f"Which colour is this? ({i})", "answer": name[:-4]}
        for i in range(3)
        for name in colors
    ]
    write_jsonl(workdir / "vqa.jsonl", rows)
    recipe = {
        "dataset": "scans",
        "sources": [{"path": str(workdir / "vqa.jsonl")}],
        "record": {"kind": "vqa"},
        "output": {"dest": str(workdir / "out"), "validation_fraction": 0.5},
    }
    version = Path(run_fresh(workdir, recipe).version_uri)
    manifest = read_manifest(str(version))
    assert manifest.format == "jumpstart-vqa"
    for split in ("train", "validation"):
        lines = read_lines([version / split / "metadata.jsonl"])  # the one file name JumpStart reads
        assert lines and all(set(line) == {"file_name", "prompt", "completion"} for line in lines)
        for line in lines:
            image = version / split / line["file_name"]
            assert line["file_name"].startswith("images/") and image.is_file()
            assert Image.open(image).getpixel((0, 0)) == colors[f"{line['completion']}.png"]
        # Hugging Face's imagefolder reads the same layout: images decoded, keys as columns.
        loaded = datasets.load_dataset("imagefolder", data_dir=str(version / split), split="train")
        assert len(loaded) == len(lines)
        assert {"image", "prompt", "completion"} <= set(loaded.column_names)
        assert loaded[0]["image"].size == (12, 8)
    # Every image is checksummed in the manifest, each stored once per split however often asked about.
    assert manifest.files and verify_checksums(str(version), manifest) == []
    assert len({f.sha256 for f in manifest.files if f.path.startswith("train/")}) == len(
        [f for f in manifest.files if f.path.startswith("train/")]
    )


def test_vqa_writes_image_bytes_from_the_connector(workdir: Path) -> None:
    """The Images contract: an ``image_bytes`` column wins over the file at ``image``."""
    data = png((9, 9, 9))
    batch = pa.table(
        {
            "id": ["a", "b"],
            "source": source_array("images", "mem://", [1, 2]),
            "image": ["does/not/exist.png", "does/not/exist.png"],
            "image_bytes": pa.array([data, data], pa.binary()),
            "question": ["q1", "q2"],
            "answer": ["a1", "a2"],
        }
    )
    writer = DatasetWriter(str(workdir / "out"), "bytes", output_format("jumpstart-vqa", "vqa"), 1 << 20, 0.0, "s")
    writer.write(batch)
    writer.flush()  # the sides are written on the writer's thread
    assert len(writer.files) == 1
    ((path, shard),) = writer.files.items()
    assert path.startswith("train/images/") and path.endswith(".png") and shard.bytes == len(data)
    writer.abort()


def test_vqa_refuses_an_unreadable_image_naming_the_record(workdir: Path) -> None:
    (workdir / "bad.png").write_bytes(b"not an image")
    batch = pa.table(
        {
            "id": ["rec-1"],
            "source": source_array("files", "x", [1]),
            "image": [str(workdir / "bad.png")],
            "question": ["q"],
            "answer": ["a"],
        }
    )
    with pytest.raises(ValueError, match=r"rec-1.*not a readable image"):
        output_format("jumpstart-vqa", "vqa").render(batch)


def customers(folder: Path) -> Path:
    """60 customers with 1-6 transactions each; one label is rare (about 8% of records)."""
    rows = []
    for customer in range(60):
        for n in range(1 + customer % 6):
            label = "fraud" if customer % 12 == 0 else ("travel" if (customer + n) % 3 else "dining")
            rows.append({"customer": f"c{customer:02d}", "text": f"txn {customer}-{n}", "label": label})
    return write_jsonl(folder / "input" / "txns.jsonl", rows)


def split_recipe(folder: Path, **output: Any) -> dict[str, Any]:
    return {
        "dataset": "txns",
        "sources": [{"path": str(customers(folder))}],
        "record": {"kind": "instruction", "prompt": "text", "completion": "label", "label": "label"},
        "output": {"dest": str(folder / "out"), "validation_fraction": 0.2, **output},
    }


def side_of_each(version: Path) -> dict[str, str]:
    """record id -> split, from the lineage."""
    return {row["id"]: row["shard"].split("/")[0] for row in lineage_rows(version)}


def test_split_is_grouped_stratified_deterministic_and_reported(workdir: Path) -> None:
    recipe = split_recipe(workdir, stratify_by="label", group_by="customer")
    first = Path(run_fresh(workdir, recipe).version_uri)
    manifest = read_manifest(str(first))

    # Grouped: no customer on both sides.
    input_rows = read_lines([workdir / "input" / "txns.jsonl"])
    sides_by_customer: dict[str, set[str]] = defaultdict(set)
    written = outputs(first)
    customer_of = {r["text"]: r["customer"] for r in input_rows}
    for split in ("train", "validation"):
        for row in read_lines(sorted((first / split).glob("*.jsonl"))):
            sides_by_customer[customer_of[row["prompt"]]].add(split)
    assert len(written) == len(input_rows)
    assert all(len(sides) == 1 for sides in sides_by_customer.values())

    # Stratified: even the rare label has validation examples; the manifest's balance is the truth.
    report = manifest.split
    assert report["method"] == "stratified" and report["group_by"] == "customer"
    validation_labels = Counter(row["completion"] for row in read_lines(sorted((first / "validation").glob("*.jsonl"))))
    assert report["labels"]["validation"] == dict(sorted(validation_labels.items()))
    assert validation_labels["fraud"] >= 1
    groups = report["groups"]
    assert groups["train"] + groups["validation"] == 60
    assert 0.1 <= groups["validation"] / 60 <= 0.3
    assert report["records"]["train"] == manifest.splits["train"].records

    # Deterministic: the same input and seed split the same way again.
    again = Path(run_fresh(workdir, recipe).version_uri)
    assert side_of_each(again) == side_of_each(first)


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ({"stratify_by": "label"}, {"stratify_by": "label"}),  # a stratified split deals groups out in order
        ({}, {"split_seed": "another"}),  # a hashed one moves every group with its seed
    ],
)
def test_a_group_read_again_by_a_later_run_joins_the_side_it_is_on(
    workdir: Path, first: dict[str, Any], then: dict[str, Any]
) -> None:
    def notes(run: int, customers: Any, each: int) -> list[dict[str, str]]:
        return [
            {"q": f"run {run} customer c{c:02d} note {n}", "a": "ok", "label": "xy"[c % 2], "customer": f"c{c:02d}"}
            for c in customers
            for n in range(each)
        ]

    write_jsonl(workdir / "in" / "v1.jsonl", notes(1, range(20), 2))
    recipe = {
        "dataset": "notes",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a", "label": "label"},
        "output": {"dest": str(workdir / "out"), "validation_fraction": 0.3, "group_by": "customer", **first},
    }
    run_recipe(load_recipe(write_recipe(workdir, recipe)))
    # Each customer again, in the other order: their new notes join the side their old ones are on.
    write_jsonl(workdir / "in" / "v2.jsonl", notes(2, reversed(range(20)), 1))
    recipe["output"] = {**recipe["output"], **then}
    second = Path(run_recipe(load_recipe(write_recipe(workdir, recipe))).version_uri)

    def sides_of_customers(version: Path) -> dict[str, set[str]]:
        sides: dict[str, set[str]] = defaultdict(set)
        for split in ("train", "validation"):
            for row in read_lines(sorted((version / split).glob("*.jsonl"))):
                sides[row["prompt"].split()[3]].add(split)
        return sides

    sides = sides_of_customers(second)
    assert len(sides) == 20 and sum(len(on) for on in sides.values()) == 20, dict(sides)
    assert 2 <= sum("validation" in on for on in sides.values()) <= 10
    # A full refresh splits every record again and keeps the new sides in place of the old ones.
    write_jsonl(workdir / "in" / "v3.jsonl", notes(3, range(20), 1))
    run_fresh(workdir, recipe)
    write_jsonl(workdir / "in" / "v4.jsonl", notes(4, reversed(range(20)), 1))
    fourth = Path(run_recipe(load_recipe(write_recipe(workdir, recipe))).version_uri)
    assert sum(len(on) for on in sides_of_customers(fourth).values()) == 20


def test_a_different_seed_moves_records_and_plain_split_is_hash_based(workdir: Path) -> None:
    base = Path(run_fresh(workdir, split_recipe(workdir)).version_uri)
    reseeded = Path(run_fresh(workdir, split_recipe(workdir, split_seed="other")).version_uri)
    assert side_of_each(base) != side_of_each(reseeded)
    assert read_manifest(str(base)).split["method"] == "hash"


def test_split_on_a_missing_column_names_it(workdir: Path) -> None:
    recipe = split_recipe(workdir, group_by="account")
    with pytest.raises(RecipeError, match=r"txns.jsonl:1: column 'account' is missing \(output.group_by names it\)"):
        run_fresh(workdir, recipe)
    assert not list((workdir / "out" / "txns").glob("v*"))  # nothing published


@pytest.mark.parametrize("setting", ["group_by", "stratify_by"])
def test_a_file_without_the_column_the_split_goes_by_sets_its_records_aside_and_the_run_goes_on(
    workdir: Path, setting: str
) -> None:
    # One export of several lacks the column: its batch failed the run ("column 'account' is not in the
    # records"), the other files' records with it. Set aside as for a column a template uses.
    write_jsonl(
        workdir / "in" / "a.jsonl", [{"q": f"Question {i}?", "a": "Yes.", "account": f"c{i % 3}"} for i in range(9)]
    )
    old = write_jsonl(workdir / "in" / "b.jsonl", [{"q": f"Old question {i}?", "a": "No."} for i in range(4)])
    recipe = {
        "dataset": "qa",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "{{ q }}", "completion": "a"},
        "batch_rows": 4,  # b.jsonl's records a batch of their own
        "output": {"dest": str(workdir / "out"), "validation_fraction": 0.3, setting: "account"},
    }
    result = run_fresh(workdir, recipe)
    assert result.manifest.counts.written == 9
    assert result.manifest.counts.reasons == {"quarantined": {"missing_column": 4}}
    aside = read_lines(sorted((Path(result.version_uri) / "set_aside").glob("*.jsonl")))
    assert sorted(row["detail"] for row in aside) == [
        f"{old}:{line}: column 'account' is missing (output.{setting} names it)" for line in range(1, 5)
    ]


@pytest.mark.parametrize("setting", ["group_by", "stratify_by", "template"])
def test_a_jsonl_key_only_later_lines_have_is_null_before_them_whatever_batch_rows(workdir: Path, setting: str) -> None:
    # A column existed in a batch only where a line of that batch had the key: with batch_rows 5, a.jsonl's
    # first five lines were set aside as of a file without "segment" (missing_column), and beside a line
    # with the key, in one batch, they were split as having no value (or quarantined by the template as null).
    write_jsonl(
        workdir / "in" / "a.jsonl",
        [{"q": f"Question {i}?", "a": "Yes.", **({"segment": f"s{i % 2}"} if i >= 5 else {})} for i in range(10)],
    )
    lacking = write_jsonl(workdir / "in" / "b.jsonl", [{"q": f"Other question {i}?", "a": "No."} for i in range(3)])
    template = setting == "template"
    outcomes = []
    for batch_rows in (1, 5, 50_000):
        recipe = {
            "dataset": f"qa{batch_rows}",
            "sources": [{"path": str(workdir / "in")}],
            "record": {
                "kind": "instruction",
                "prompt": "{{ q }} {{ segment }}" if template else "q",
                "completion": "a",
            },
            "batch_rows": batch_rows,
            "output": {"dest": str(workdir / "out"), "validation_fraction": 0.3}
            | ({} if template else {setting: "segment"}),
        }
        version = Path(run_fresh(workdir, recipe).version_uri)
        published = {
            (split, row["prompt"])
            for split in ("train", "validation")
            for row in read_lines((version / split).glob("*.jsonl"))
        }
        aside = sorted((row["reason"], row["detail"]) for row in read_lines((version / "set_aside").glob("*.jsonl")))
        outcomes.append((published, aside))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    published, aside = outcomes[0]
    # A file none of whose lines has the key lacks the column: its records are set aside, in any batch.
    missing = [
        (
            "missing_column",
            f"{lacking}:{line}: "
            + (
                "prompt: column 'segment' is missing (the template uses it)"
                if template
                else f"column 'segment' is missing (output.{setting} names it)"
            ),
        )
        for line in (1, 2, 3)
    ]
    if template:  # a line without the key holds null, which the template cannot write
        assert len(published) == 5
        assert [reason for reason, _ in aside] == ["missing_column"] * 3 + ["template"] * 5
        assert aside[:3] == missing
    else:  # split as records with no value
        assert len(published) == 10
        assert aside == missing


@pytest.mark.parametrize("malformed", [False, True])
def test_a_jsonl_file_is_searched_once_for_all_the_keys_its_first_batch_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, malformed: bool
) -> None:
    # Each missing key had the file's blocks parsed for it again: polars read a block that spelt two keys
    # twice, and where polars cannot take a line, each line spelling a key was parsed once per key.
    import contextlib

    import connectors.files as files_module
    from connectors.files import FilesSourceReader
    from schemas.config import FilesSource

    lines = [{"q": "x"}, {"q": "y", "meta": {"a": 1}}, {"q": "z", "a": 1, "b": None}, {"q": "w", "meta": {"id": 3}}]
    path = write_jsonl(tmp_path / "a.jsonl", [*lines, *(["{not json"] if malformed else [])])
    reader = FilesSourceReader(FilesSource(path=str(path)), batch_rows=10)
    (entry,) = reader.entries()
    opened, read, parsed, loaded = [], [], [], []
    real_open, real_read_ndjson, real_loads = files_module.open_input, files_module.pl.read_ndjson, json.loads

    class Counted:  # the file's own stream, its bytes counted
        def __init__(self, stream: Any) -> None:
            self.stream = stream

        def read(self, size: int = -1) -> bytes:
            data = self.stream.read(size)
            read.append(len(data))
            return data

    @contextlib.contextmanager
    def open_counted(*args: Any, **kwargs: Any) -> Any:
        opened.append(args[1])
        with real_open(*args, **kwargs) as stream:
            yield Counted(stream)

    monkeypatch.setattr(files_module, "open_input", open_counted)
    monkeypatch.setattr(files_module.pl, "read_ndjson", lambda *a, **k: parsed.append(1) or real_read_ndjson(*a, **k))
    monkeypatch.setattr(files_module.json, "loads", lambda *a, **k: loaded.append(1) or real_loads(*a, **k))
    assert reader._keys_held(entry, ["a", "b", "c", "input_id"]) == {"a", "b"}
    assert len(opened) == 1 and sum(read) == path.stat().st_size  # the file read once, whole
    assert len(parsed) == 1  # one block, parsed once for all four keys
    assert len(loaded) == (3 if malformed else 0)  # the lines spelling a key, once each


def test_format_options_that_do_not_fit_the_format_are_refused(workdir: Path) -> None:
    recipe = instruction_recipe(workdir, "jumpstart-instruction", system_prompt="Be brief.")
    with pytest.raises(RecipeError, match="system_prompt applies to the jumpstart-chat"):
        load_recipe(write_recipe(workdir, recipe))
    recipe = instruction_recipe(workdir, "messages", chunk_chars=100)
    with pytest.raises(RecipeError, match="chunk_chars applies to the text format"):
        load_recipe(write_recipe(workdir, recipe))


@pytest.mark.parametrize(("stratify", "dedup"), [(False, True), (True, True), (False, False)])
def test_a_group_key_object_groups_together_from_parquet_and_jsonl(workdir: Path, stratify: bool, dedup: bool) -> None:
    """One customer, given as a Parquet struct (every field, in the schema's order), a JSONL object (its
    own keys, in its order) and its JSON text (a JSONL column that mixes objects and text), is one group
    on one side. The run failed (Unsupported cast from string to struct) where batches of the carried
    column met (exact_dedup), and without such a stage the customer was split across both sides."""
    import pyarrow.parquet as pq

    folder = workdir / "mixed"
    folder.mkdir()
    customers = [{"id": n, "name": f"c{n}", "vip": None} for n in range(12)]
    pq.write_table(
        pa.table({"text": [f"p{n}" for n in range(12)], "label": ["a"] * 12, "customer": customers}),
        folder / "a.parquet",
    )
    write_jsonl(
        folder / "b.jsonl", [{"text": f"j{n}", "label": "a", "customer": {"name": f"c{n}", "id": n}} for n in range(12)]
    )
    write_jsonl(
        folder / "c.jsonl",
        [{"text": "walk-in", "label": "a", "customer": "walk-in"}]
        + [{"text": f"k{n}", "label": "a", "customer": {"id": n, "name": f"c{n}"}} for n in range(12)],
    )
    recipe = {
        "dataset": "grouped",
        "sources": [{"path": str(folder) + "/"}],
        "record": {"kind": "document"},
        "stages": [{"type": "exact_dedup"}] if dedup else [],
        "output": {"dest": str(workdir / "out"), "validation_fraction": 0.5, "group_by": "customer"},
    }
    if stratify:
        recipe["output"]["stratify_by"] = "label"
    version = Path(run_fresh(workdir, recipe).version_uri)
    sides: dict[str, set[str]] = defaultdict(set)
    for split in ("train", "validation"):
        for row in read_lines(sorted((version / split).glob("*.jsonl"))):
            sides[row["text"][1:] if row["text"] != "walk-in" else "walk-in"].add(split)
    assert len(sides) == 13 and all(len(found) == 1 for found in sides.values()), dict(sides)
    assert (
        read_manifest(str(version)).split["groups"]["train"] + read_manifest(str(version)).split["groups"]["validation"]
        == 13
    )


def test_a_boolean_label_is_one_label_whether_its_column_mixes_types_or_not(workdir: Path) -> None:
    """A label column of booleans gave "True" where a block held booleans only and "true" where another
    line's text made the column text: two labels for one value, each balanced on its own."""
    folder = workdir / "labels"
    write_jsonl(folder / "a.jsonl", [{"text": f"a{n}", "fraud": n % 2 == 0} for n in range(20)])
    write_jsonl(
        folder / "b.jsonl",
        [{"text": f"b{n}", "fraud": n % 2 == 0} for n in range(20)] + [{"text": "u", "fraud": "unknown"}],
    )
    recipe = {
        "dataset": "labels",
        "sources": [{"path": str(folder) + "/"}],
        "record": {"kind": "document"},
        "stages": [],  # exact_dedup fails the run on a column that is bool in one file and text in another
        "output": {"dest": str(workdir / "out"), "validation_fraction": 0.25, "stratify_by": "fraud"},
    }
    labels = read_manifest(run_fresh(workdir, recipe).version_uri).split["labels"]
    assert set(labels["train"]) | set(labels["validation"]) == {"true", "false", "unknown"}
    assert labels["train"]["true"] + labels["validation"]["true"] == 20


def test_a_group_placed_by_an_earlier_release_keeps_its_side(tmp_path: Path) -> None:
    # Releases before 2026-11-26 keyed a boolean group as Python writes it (True) and an object as Python's
    # repr of it; it is true and sorted JSON now. Looked up only by the new text, the group was placed
    # again, and its new records could land on the other side of the version that carries its old ones.
    from curation.split import Splitter
    from curation.state import StateStore

    state = StateStore(f"sqlite:///{tmp_path}/state.db")
    earlier = ["True", "False", "{'id': 7, 'name': 'Acme'}", "[1, 'a']", "walk-in"]
    state.record_group_sides("d", {f"g\x1f{key}": True for key in earlier}, start_over=False)

    def sides(column: pa.Array) -> list[bool]:
        splitter = Splitter(0.0, "seed", group_by="customer")  # nothing goes to validation unless placed there
        splitter.known = lambda keys: state.group_sides("d", keys)
        return splitter.assign(pa.table({"id": [f"r{n}" for n in range(len(column))], "customer": column})).to_pylist()

    assert sides(pa.array([True, False, None])) == [True, True, False]
    # As the shape stage carries an object or array: its JSON, keys sorted.
    assert sides(pa.array(['{"id":7,"name":"Acme"}', '[1,"a"]', "walk-in", '{"id":8,"name":"Acme"}'])) == [
        True,
        True,
        True,
        False,
    ]
    state.record_group_sides("d", {"g\x1ftrue": False}, start_over=False)  # placed by this release: it wins
    assert sides(pa.array([True])) == [False]


def test_a_whole_number_group_key_or_label_is_one_value_in_jsonl_and_a_float_parquet_column(workdir: Path) -> None:
    """pandas writes an integer column with a missing value as float64: customer 5 in a JSONL file and 5.0 in
    a Parquet one were two groups ("5" and "5.0"), one customer on both sides, and 1 and 1.0 two labels."""
    folder = workdir / "in"
    write_jsonl(folder / "a.jsonl", [{"text": f"a {n}", "customer": n, "label": n % 2} for n in range(40)])
    pq.write_table(
        pa.table(
            {
                "text": [f"b {n}" for n in range(40)] + ["b none"],
                "customer": pa.array([float(n) for n in range(40)] + [None]),
                "label": pa.array([float(n % 2) for n in range(40)] + [None]),
            }
        ),
        folder / "b.parquet",
    )
    recipe = {
        "dataset": "grouped",
        "sources": [{"path": str(folder) + "/"}],
        "record": {"kind": "document"},
        "stages": [],
        "output": {"dest": str(workdir / "out"), "validation_fraction": 0.5, "group_by": "customer"},
    }
    sides: dict[str, set[str]] = defaultdict(set)
    version = Path(run_fresh(workdir, recipe).version_uri)
    for split in ("train", "validation"):
        for row in read_lines(sorted((version / split).glob("*.jsonl"))):
            sides[row["text"].split()[-1]].add(split)
    assert len(sides) == 41 and not {customer: found for customer, found in sides.items() if len(found) > 1}
    recipe["output"] = {"dest": str(workdir / "out"), "validation_fraction": 0.5, "stratify_by": "label"}
    labels = read_manifest(run_fresh(workdir, recipe).version_uri).split["labels"]
    assert set(labels["train"]) | set(labels["validation"]) == {"0", "1", "(none)"}


def test_a_float_group_placed_by_an_earlier_release_keeps_its_side(tmp_path: Path) -> None:
    # Releases before 2026-11-28 keyed a whole float as Python writes it (5.0); it is the integer's text now
    # (5, as a JSONL file has it). Looked up only by the new text, the group was placed again.
    from curation.split import Splitter
    from curation.state import StateStore

    state = StateStore(f"sqlite:///{tmp_path}/state.db")
    state.record_group_sides("d", {"g\x1f5.0": True, "g\x1f-3.0": True, "g\x1f1e+16": True}, start_over=False)

    def sides(column: pa.Array) -> list[bool]:
        splitter = Splitter(0.0, "seed", group_by="customer")  # nothing goes to validation unless placed there
        splitter.known = lambda keys: state.group_sides("d", keys)
        return splitter.assign(pa.table({"id": [f"r{n}" for n in range(len(column))], "customer": column})).to_pylist()

    assert sides(pa.array([5.0, 5.5, 6.0, -3.0, 1e16])) == [True, False, False, True, True]
    assert sides(pa.array([5, 6, -3, 10**16])) == [True, False, True, True]  # the same customer from a JSONL file
    assert sides(pa.array(["5", "05", "9" * 400])) == [True, False, False]  # an id "05" is no 5
    state.record_group_sides("d", {"g\x1f5": False}, start_over=False)  # placed by this release: it wins
    assert sides(pa.array([5.0])) == [False]


def test_a_decimal_group_key_is_the_same_group_as_its_integer(tmp_path: Path) -> None:
    # A SQL NUMERIC(10,2) customer 5.00 was the group "5.00", the same customer from a JSONL file "5": one
    # customer on both sides. Text stays text: a group placed under "5.0" (a float or a text then) keeps its side.
    import decimal

    from curation.split import Splitter
    from curation.state import StateStore

    def sides(column: pa.Array, fraction: float = 0.5) -> list[bool]:
        splitter = Splitter(fraction, "seed", group_by="customer")
        splitter.known = lambda keys: state.group_sides("d", keys)
        return splitter.assign(pa.table({"id": [f"r{n}" for n in range(len(column))], "customer": column})).to_pylist()

    state = StateStore(f"sqlite:///{tmp_path}/state.db")
    numbers = [decimal.Decimal(n).scaleb(-2) for n in range(-4000, 4000, 50)]  # -40.00 .. 39.50
    by_decimal = sides(pa.array(numbers, pa.decimal128(10, 2)))
    assert by_decimal == sides(pa.array([float(n) for n in numbers]))
    assert 0 < sum(by_decimal) < len(numbers)
    state.record_group_sides("d", {"g\x1f5.0": True}, start_over=False)
    for column in (pa.array(["5.0"]), pa.array([5.0]), pa.array([5]), pa.array([decimal.Decimal("5.00")])):
        assert sides(column, 0.0) == [True]


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ({"stratify_by": "label"}, {}),  # a stratified split deals labels out in input order
        ({}, {"split_seed": "another"}),  # a hashed one moves records with its seed
    ],
)
def test_a_record_read_again_stays_on_its_side(workdir: Path, first: dict[str, Any], then: dict[str, Any]) -> None:
    """A changed file is read again whole: its records published before keep their side (their ids do not
    move with their line), or a later version holds in validation what a model of the earlier trained on."""

    def notes(numbers: range) -> list[dict[str, str]]:
        return [{"q": f"note {n}", "a": "ok", "label": "xyz"[n % 3]} for n in numbers]

    write_jsonl(workdir / "in" / "notes.jsonl", notes(range(60)))
    recipe = {
        "dataset": "notes",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a", "label": "label"},
        "output": {"dest": str(workdir / "out"), "validation_fraction": 0.2, **first},
    }
    before = side_of_each(Path(run_recipe(load_recipe(write_recipe(workdir, recipe))).version_uri))
    # New notes at the top of the file, which is read again whole.
    write_jsonl(workdir / "in" / "notes.jsonl", notes(range(60, 73)) + notes(range(60)))
    recipe["output"] = {**recipe["output"], **then}
    second = side_of_each(Path(run_recipe(load_recipe(write_recipe(workdir, recipe))).version_uri))
    assert len(second) == 73
    assert {record: second[record] for record in before} == before


def test_a_version_whose_records_all_went_to_validation_says_so(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One customer's records, grouped: hashing puts the one group on either side, and on validation the
    version has nothing to train on (training refuses it), which later runs keep so (a group keeps its side)."""
    seed = seed_placing_group(0.5, in_validation=True)
    write_jsonl(workdir / "in" / "notes.jsonl", [{"q": f"note {n}", "a": "ok", "customer": "c1"} for n in range(3)])
    recipe = {
        "dataset": "notes",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "output": {
            "dest": str(workdir / "out"),
            "validation_fraction": 0.5,
            "split_seed": seed,
            "group_by": "customer",
        },
    }
    with caplog.at_level("WARNING"):
        manifest = run_fresh(workdir, recipe).manifest
    assert manifest.splits["train"].records == 0 and manifest.splits["validation"].records == 3
    said = [r.getMessage() for r in caplog.records if "train split holds no record" in r.getMessage()]
    assert said and "notes v1" in said[0] and "split_seed" in said[0], caplog.text


def test_vqa_records_published_before_images_were_grouped_keep_their_sides() -> None:
    # Releases before split VQA records one by one: a record of a sidecar read again stays where the version it
    # extends holds it, while a new question about the same picture goes by the picture.
    splitter = Splitter(0.5, "seed", by_image=True)
    picture = pa.array([b"scan"] * 4, pa.binary())
    ids = [f"r{n}" for n in range(4)]
    by_image = splitter.assign(pa.table({"id": ids, "image_bytes": picture})).to_pylist()
    assert len(set(by_image)) == 1  # one picture, one side
    earlier = not by_image[0]
    splitter.keep_sides(pa.array(ids[:2]), pa.array([earlier, earlier]))
    again = splitter.assign(pa.table({"id": ids, "image_bytes": picture})).to_pylist()
    assert again == [earlier, earlier, by_image[0], by_image[0]]


def test_decimal_group_keys_that_differ_past_28_digits_are_two_keys() -> None:
    from decimal import Decimal

    from curation.split import key_text

    # Normalised in Python's default context (28 digits), two customers' keys were one text.
    first, second = (
        Decimal("0.12345678901234567890123456789012345678"),
        Decimal("0.12345678901234567890123456789012345679"),
    )
    assert key_text(first) == "0.12345678901234567890123456789012345678"
    assert key_text(second) == "0.12345678901234567890123456789012345679"
    assert key_text(Decimal("5.50")) == "5.5" and key_text(Decimal("5.00")) == "5"


def test_a_version_whose_validation_side_came_out_empty_says_so(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Too few records (here one customer's, grouped) at validation_fraction 0.1 all hash to train: the recipe
    asked for a validation side and the version has none, which the manifest records but the run did not say.
    Grouped so the side does not hang on the record ids, which hold the input's absolute path."""
    seed = seed_placing_group(0.1, in_validation=False)
    write_jsonl(workdir / "in" / "a.jsonl", [{"q": f"note {n}", "a": "ok", "customer": "c1"} for n in range(2)])
    recipe = {
        "dataset": "tiny",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "output": {
            "dest": str(workdir / "out"),
            "validation_fraction": 0.1,
            "split_seed": seed,
            "group_by": "customer",
        },
    }
    with caplog.at_level("WARNING"):
        manifest = run_fresh(workdir, recipe).manifest
    assert manifest.splits["train"].records == 2 and manifest.splits["validation"].records == 0
    said = [r.getMessage() for r in caplog.records if "the validation side is empty" in r.getMessage()]
    assert said and said[0].startswith("tiny v1: the validation side is empty (all 2 went to train)"), caplog.text
    # Grouped: groups keep their sides, so more records of the one group would never fill it.
    assert "publish more groups of 'customer' (each keeps its side)" in said[0], said
    # At validation_fraction 0 an empty validation side is what the recipe asked for: nothing to say.
    caplog.clear()
    recipe["output"]["validation_fraction"] = 0.0
    with caplog.at_level("WARNING"):
        run_fresh(workdir, recipe)
    assert "the validation side is empty" not in caplog.text


def test_a_delta_version_with_an_empty_validation_side_is_not_warned_about(
    workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `carry_forward: false`: a scheduled run's few new records make a version of their own, whose validation side
    # is often empty while the chain's is not: every small run warned.
    rows = [{"q": f"note {n}", "a": "ok"} for n in range(60)]
    write_jsonl(workdir / "in" / "a.jsonl", rows)
    recipe = {
        "dataset": "chain",
        "sources": [{"path": str(workdir / "in")}],
        "record": {"kind": "instruction", "prompt": "q", "completion": "a"},
        "output": {"dest": str(workdir / "out"), "validation_fraction": 0.1, "carry_forward": False},
    }
    first = run_recipe(load_recipe(write_recipe(workdir, recipe)))
    assert first.manifest.splits["validation"].records > 0
    for n in range(3):  # one new record a run: its version's validation side is empty, or not, by its hash
        write_jsonl(workdir / "in" / f"new-{n}.jsonl", [{"q": f"late note {n}", "a": "ok"}])
        with caplog.at_level("WARNING"):
            later = run_recipe(load_recipe(write_recipe(workdir, recipe)))
        assert later.manifest.holds_only_its_run
    assert "the validation side is empty" not in caplog.text
