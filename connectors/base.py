"""The source contract: a source lists what it will read and yields Arrow batches of rows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

from schemas.manifest import InputFile
from schemas.records import empty_set_aside


@dataclass
class SourceBatch:
    """Rows read (with ``id`` and ``source`` columns) and input that could not become a row."""

    rows: pa.Table
    set_aside: pa.Table = field(default_factory=empty_set_aside)
    input_bytes: int = 0  # bytes of input consumed, for progress

    @property
    def input_records(self) -> int:
        return self.rows.num_rows + self.set_aside.num_rows


class Source(Protocol):
    name: str

    def inputs(self) -> list[InputFile]:
        """What this run will read (files, objects, tables), for the manifest and progress."""
        ...

    def batches(self) -> Iterator[SourceBatch]: ...
