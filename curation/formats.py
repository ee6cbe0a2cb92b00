"""Output formats: how a record becomes one JSONL line, and the side files a consumer needs.

- ``text``: SageMaker JumpStart domain-adaptation fine-tuning reads JSON lines with a ``text``
  field (JumpStart text-generation fine-tuning, "domain adaptation" data format).
- ``jumpstart-instruction``: JumpStart instruction fine-tuning reads JSON lines whose keys fill
  the ``{placeholders}`` of a ``template.json`` (``{"prompt": ..., "completion": ...}``) kept in
  the same channel folder as the data (SageMaker docs, "Fine-tune a large language model (LLM)
  using prompt instructions", and the JumpStart Llama fine-tuning notebooks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


@dataclass(frozen=True)
class OutputFormat:
    name: str
    kinds: frozenset[str]
    columns: tuple[str, ...]  # keys of each output line, in order
    side_files: dict[str, bytes] = field(default_factory=dict)  # path in each split folder -> content

    def rows(self, batch: pa.Table) -> pa.Table:
        return batch.select(list(self.columns))

    def row_schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {c: {"type": "string"} for c in self.columns},
            "required": list(self.columns),
        }


JUMPSTART_TEMPLATE = {"prompt": "{prompt}", "completion": "{completion}"}

FORMATS: dict[str, OutputFormat] = {
    "text": OutputFormat("text", frozenset({"document"}), ("text",)),
    "jumpstart-instruction": OutputFormat(
        "jumpstart-instruction",
        frozenset({"instruction"}),
        ("prompt", "completion"),
        {"template.json": json.dumps(JUMPSTART_TEMPLATE, indent=2).encode() + b"\n"},
    ),
}


def output_format(name: str, kind: str) -> OutputFormat:
    fmt = FORMATS[name]
    if kind not in fmt.kinds:
        raise ValueError(f"output format {name!r} takes {sorted(fmt.kinds)} records, not {kind!r}")
    return fmt
