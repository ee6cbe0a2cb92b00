"""Output formats: how records become the lines (and side files) a trainer reads.

Each formatter cites the contract it follows. ``render`` turns a batch of records into the output
lines (nested JSON values allowed: lists of messages), which record each line came from (one record
may become several lines, e.g. chunked documents) and the binary files the lines refer to (images).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from connectors.chunk import chunk_text as chunk_pieces
from connectors.storage import filesystem, key_as_a_path

MESSAGE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])
# JumpStart's dialog convention writes each turn as {"content": ..., "role": ...}.
DIALOG_TURN = pa.struct([pa.field("content", pa.string()), pa.field("role", pa.string())])
TEXT_BLOCK = pa.struct([pa.field("text", pa.string())])
BEDROCK_MESSAGE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.list_(TEXT_BLOCK))])


class FormatError(ValueError):
    """A record the format cannot write; the message names the record and what to do."""


@dataclass
class Rendered:
    rows: pa.Table  # the output lines, columns in output order
    index: pa.Array | None = None  # row of the input batch each line came from (None: one line per record)
    files: dict[str, bytes] = field(default_factory=dict)  # path relative to the split folder -> content


@dataclass(frozen=True)
class FormatOptions:
    """Recipe settings some formats use."""

    system_prompt: str | None = None
    chunk_chars: int | None = None  # text format: cut documents into pieces of at most this many characters


@dataclass(frozen=True)
class OutputFormat:
    name: str
    kinds: frozenset[str]
    columns: tuple[str, ...]  # keys of each output line, in order
    side_files: dict[str, bytes] = field(default_factory=dict)  # path in each split folder -> content
    renderer: Callable[[pa.Table, FormatOptions], Rendered] | None = None  # None: select ``columns``
    properties: dict[str, Any] = field(default_factory=dict)  # JSON schema of columns that are not strings
    data_file: str | None = None  # the consumer reads one file of this name per split (no sharding)
    options: FormatOptions = field(default_factory=FormatOptions)

    def render(self, batch: pa.Table) -> Rendered:
        if self.renderer is None:
            return Rendered(batch.select(list(self.columns)))
        return self.renderer(batch, self.options)

    def rows(self, batch: pa.Table) -> pa.Table:
        return self.render(batch).rows

    def row_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {c: self.properties.get(c, {"type": "string"}) for c in self.columns},
            "required": list(self.columns),
        }


def _list_of(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


def _object(**properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


_STRING = {"type": "string"}


# --- text: domain adaptation ---------------------------------------------------------------------
# JumpStart text-generation fine-tuning, domain adaptation (``instruction_tuned="False"``): "a train and
# an optional validation directory. Each directory contains a CSV/JSON/TXT file ... the data is used
# from the column called 'text' ... The number of files under train and validation (if provided)
# should equal to one" (JumpStart Llama 3 fine-tuning notebook, amazon-sagemaker-examples,
# jumpstart-foundation-models, appendix "Dataset formatting instruction for training", 2.1). So each
# split is one file, whatever ``output.shard_max_bytes`` says (``curation.writer.ONE_FILE_FORMATS``).


def chunk_text(text: str, limit: int) -> list[str]:
    """Pieces of at most ``limit`` characters, as the documents chunker cuts them (whole paragraphs,
    a longer one at a sentence end or space, not inside a name or number; no overlap), each stripped; a text
    that fits is its one piece, as it is. Cut at the last space before the limit instead, a piece
    ran into the next paragraph, and the text left was copied at each cut (a 6 MB text took 2 s)."""
    if len(text) <= limit:
        return [text]
    return [piece for chunk in chunk_pieces(text, limit) if (piece := chunk.text.strip())]


def _text(batch: pa.Table, options: FormatOptions) -> Rendered:
    if options.chunk_chars is None:
        return Rendered(batch.select(["text"]))
    texts, index = [], []
    for row, text in enumerate(batch["text"].to_pylist()):
        for piece in chunk_text(text, options.chunk_chars):
            texts.append(piece)
            index.append(row)
    return Rendered(pa.table({"text": pa.array(texts, pa.string())}), pa.array(index, pa.int64()))


# --- instruction tuning ----------------------------------------------------------------------------
# JumpStart instruction fine-tuning (``instruction_tuned="True"``) reads one or more ``.jsonl`` files
# from the train (and optional validation) directory, and a ``template.json`` beside them whose
# ``prompt`` and ``completion`` templates are filled from each line's keys (same notebook, 2.2; the
# ``.jsonl`` extension is mandatory).
JUMPSTART_TEMPLATE = {"prompt": "{prompt}", "completion": "{completion}"}


def _interleaved(columns: list[pa.Array | pa.ChunkedArray]) -> pa.Array:
    """The values of ``columns`` record by record: a0, b0, c0, a1, b1, c1, ..."""
    count, width = len(columns[0]), len(columns)
    arrays = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns]
    values = pa.concat_arrays([a.cast(pa.string()) for a in arrays])
    return values.take((np.arange(count)[:, None] + np.arange(width) * count).ravel())


def _lists(values: pa.Array, count: int, width: int) -> pa.ListArray:
    """``count`` lists of ``width`` consecutive values each."""
    return pa.ListArray.from_arrays(pa.array(np.arange(count + 1, dtype=np.int32) * width), values)


def _conversation(batch: pa.Table, options: FormatOptions, turn_type: pa.StructType) -> pa.Array:
    """Each record's turns ([system,] user prompt, assistant completion) as a list of ``turn_type``,
    assembled from whole columns: a dict per turn cost more than writing its line."""
    count = batch.num_rows
    texts, roles = [batch["prompt"], batch["completion"]], ["user", "assistant"]
    if options.system_prompt:
        texts.insert(0, pa.repeat(pa.scalar(options.system_prompt, pa.string()), count))
        roles.insert(0, "system")
    fields = {
        "content": _interleaved(texts),
        "role": pa.array(roles, pa.string()).take(np.tile(np.arange(len(roles)), count)),
    }
    turns = pa.StructArray.from_arrays([fields[f.name] for f in turn_type], fields=list(turn_type))
    return _lists(turns, count, len(roles))


# JumpStart chat fine-tuning of Llama chat/instruct models (hyperparameter ``chat_dataset="True"``):
# each line is ``{"dialog": [{"content": ..., "role": "user"}, {"content": ..., "role": "assistant"}]}``,
# an optional ``system`` turn first (JumpStart Llama 2/3 fine-tuning notebooks, "chat_dataset"
# section; the same check appears in the training scripts: "value of `dialog` should be List[dict]").
def _dialog(batch: pa.Table, options: FormatOptions) -> Rendered:
    dialog = _conversation(batch, options, DIALOG_TURN)
    return Rendered(pa.table({"dialog": dialog}))


# OpenAI chat fine-tuning / TRL ``SFTTrainer`` conversational format:
# ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`` (OpenAI fine-tuning
# guide "Preparing your dataset"; TRL docs "Dataset formats and types", conversational language modeling;
# TRL's ``is_conversational`` checks for a ``messages`` list of role/content dicts).
def _messages(batch: pa.Table, options: FormatOptions) -> Rendered:
    messages = _conversation(batch, options, MESSAGE)
    return Rendered(pa.table({"messages": messages}))


# Amazon Bedrock model customisation, text conversation data (Bedrock user guide, "Prepare data for
# fine-tuning text-to-text models" and "distillation-data-prep-option-1"): one JSON object a line,
# ``{"schemaVersion": "bedrock-conversation-2024", "system": [{"text": ...}],
#   "messages": [{"role": "user", "content": [{"text": ...}]}, {"role": "assistant", "content": [{"text": ...}]}]}``.
BEDROCK_SCHEMA_VERSION = "bedrock-conversation-2024"


def _bedrock(batch: pa.Table, options: FormatOptions) -> Rendered:
    count = batch.num_rows
    system_count = 1 if options.system_prompt else 0
    system = pa.repeat(pa.scalar(options.system_prompt or "", pa.string()), count * system_count)
    blocks = pa.StructArray.from_arrays([_interleaved([batch["prompt"], batch["completion"]])], fields=list(TEXT_BLOCK))
    roles = pa.array(["user", "assistant"], pa.string()).take(np.tile(np.arange(2), count))
    messages = pa.StructArray.from_arrays([roles, _lists(blocks, 2 * count, 1)], fields=list(BEDROCK_MESSAGE))
    return Rendered(
        pa.table(
            {
                "schemaVersion": pa.repeat(pa.scalar(BEDROCK_SCHEMA_VERSION, pa.string()), count),
                "system": _lists(pa.StructArray.from_arrays([system], fields=list(TEXT_BLOCK)), count, system_count),
                "messages": _lists(messages, count, 2),
            }
        )
    )


# --- visual question answering ---------------------------------------------------------------------
# JumpStart fine-tuning of Llama 3.2 Vision (model ids ``meta-vlm-llama-3-2-11b-vision[-instruct]``):
# each channel folder (train/, validation/) holds an ``images/`` folder and a ``metadata.jsonl`` whose
# lines are ``{"file_name": "images/<name>", "prompt": <question>, "completion": <answer>}`` (AWS ML blog
# "Accelerating LLM fine-tuning with unstructured data using SageMaker Unified Studio and S3", with its
# notebook aws-samples/sample-finetuning-sagemaker-unified-studio-with-s3; the same layout is Hugging
# Face's ``imagefolder``, so ``load_dataset("imagefolder")`` reads it too). Images are stored under
# the sha256 of their bytes, so a picture asked about twice is written once.
# MPO (Multi-Picture Format) is how many phone cameras write a JPEG: its first picture is the photo, as a JPEG.
IMAGE_EXTENSIONS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tiff",
}


def image_extension(data: bytes) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return IMAGE_EXTENSIONS.get(image.format or "")
    except (UnidentifiedImageError, OSError):
        return None


def _read_image(uri: str) -> bytes:
    # The key image_check read: it refuses one with a '..' part; Arrow refuses an empty part ("c//d.png").
    fs, path = filesystem(key_as_a_path(uri) or uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _vqa(batch: pa.Table, options: FormatOptions) -> Rendered:
    has_bytes = "image_bytes" in batch.column_names
    images = batch["image_bytes"].to_pylist() if has_bytes else [None] * batch.num_rows
    files: dict[str, bytes] = {}
    names = []
    for row, (uri, data, record_id) in enumerate(
        zip(batch["image"].to_pylist(), images, batch["id"].to_pylist(), strict=True)
    ):
        if data is None:
            try:
                data = _read_image(uri)
            except (OSError, FileNotFoundError) as error:
                raise FormatError(f"record {record_id} (row {row}): cannot read image {uri!r}: {error}") from None
        extension = image_extension(data)
        if extension is None:
            raise FormatError(f"record {record_id}: image {uri!r} is not a readable image (JPEG, PNG, GIF, WebP)")
        name = f"images/{hashlib.sha256(data).hexdigest()}.{extension}"
        files[name] = data
        names.append(name)
    rows = pa.table(
        {"file_name": pa.array(names, pa.string()), "prompt": batch["question"], "completion": batch["answer"]}
    )
    return Rendered(rows, files=files)


FORMATS: dict[str, OutputFormat] = {
    "text": OutputFormat("text", frozenset({"document"}), ("text",), renderer=_text),
    "jumpstart-instruction": OutputFormat(
        "jumpstart-instruction",
        frozenset({"instruction"}),
        ("prompt", "completion"),
        {"template.json": json.dumps(JUMPSTART_TEMPLATE, indent=2).encode() + b"\n"},
    ),
    "jumpstart-chat": OutputFormat(
        "jumpstart-chat",
        frozenset({"instruction"}),
        ("dialog",),
        renderer=_dialog,
        properties={"dialog": _list_of(_object(content=_STRING, role=_STRING))},
    ),
    "messages": OutputFormat(
        "messages",
        frozenset({"instruction"}),
        ("messages",),
        renderer=_messages,
        properties={"messages": _list_of(_object(role=_STRING, content=_STRING))},
    ),
    "bedrock-conversation": OutputFormat(
        "bedrock-conversation",
        frozenset({"instruction"}),
        ("schemaVersion", "system", "messages"),
        renderer=_bedrock,
        properties={
            "schemaVersion": {"const": BEDROCK_SCHEMA_VERSION},
            "system": _list_of(_object(text=_STRING)),
            "messages": _list_of(_object(role=_STRING, content=_list_of(_object(text=_STRING)))),
        },
    ),
    "jumpstart-vqa": OutputFormat(
        "jumpstart-vqa",
        frozenset({"vqa"}),
        ("file_name", "prompt", "completion"),
        renderer=_vqa,
        data_file="metadata.jsonl",
    ),
}


def output_format(name: str, kind: str, options: FormatOptions | None = None) -> OutputFormat:
    fmt = FORMATS[name]
    if kind not in fmt.kinds:
        raise ValueError(f"output format {name!r} takes {sorted(fmt.kinds)} records, not {kind!r}")
    if options is not None:
        fmt = OutputFormat(**{**fmt.__dict__, "options": options})
    return fmt


def take_rows(batch: pa.Table, rendered: Rendered) -> pa.Table:
    """The input record behind each output line (for lineage)."""
    return batch if rendered.index is None else batch.take(rendered.index)
