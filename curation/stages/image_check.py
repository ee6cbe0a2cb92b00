"""VQA records whose image the output format could not write are quarantined here, not at write time.

A VQA record from a files, SQL or Hugging Face source names its image by a path or URI, which the
``jumpstart-vqa`` format reads when it writes the record (the ``images`` connector, and a Hugging Face
source's ``Image()`` feature, hand the verified bytes on instead). An image that is not there, cannot be
read or is not one of the format's image types failed the whole run after everything was read; here its
record is set aside with its reason. Each image is decoded here, one at a time, as the images connector
decodes its own: one cut short or damaged was published as it is (the writer copies its bytes), and failed
the training job that loaded it.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyarrow.fs import FileType

from connectors.base import Source
from connectors.storage import Unreadable, climbs, exists_as_written, filesystem, is_s3, key_as_a_path, os_reason
from curation.formats import IMAGE_EXTENSIONS
from curation.stages.base import StageResult, rows_as_python, split_by_mask
from schemas.config import DEFAULT_MAX_PIXELS
from schemas.records import input_record_json, location, set_aside_rows

# Bytes read at a time as Pillow reads an image: one request for most S3 images, not one per marker.
_READ_SIZE = 64 * 1024


class _Reads(io.RawIOBase):
    """A file handle that remembers an error of the storage under it, so a failed read is told from bytes
    Pillow cannot identify (both raise OSError out of ``Image.open``)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()

    def readinto(self, buffer: Any) -> int:
        try:
            data = self.handle.read(len(buffer))
        except OSError as error:
            self.error = error
            raise
        buffer[: len(data)] = data
        return len(data)


def _why(error: Exception) -> str:
    return os_reason(error).splitlines()[0]  # a detail is one line


def _not_read(fs: Any, path: str, name: str, error: OSError) -> tuple[str, str]:
    """``missing_image`` where nothing, or a folder, is at ``path`` (the row's fault: the images connector quarantines
    a row naming a folder as ``unreadable``, but not to be read again); else ``unreadable`` (it may not be read,
    a share away, S3 throttling): for now only (what reads it again depends on the source and on the run:
    ``curation.executors.local.reads_again``)."""
    try:
        found = fs.get_file_info(path).type
    except (OSError, ValueError):
        found = None
    if isinstance(error, FileNotFoundError) or found in (FileType.NotFound, FileType.Directory):
        return "missing_image", f"{name}: cannot read ({_why(error)})"
    return "unreadable", f"{name}: cannot read ({_why(error)})"


def image_problem(uri: str, name: str | None = None) -> tuple[str, str] | None:
    """Why the ``jumpstart-vqa`` format could not write the image at ``uri`` (reason, and a detail that
    begins with its ``name`` as the record gives it, as the images connector's details do), or None."""
    from PIL import Image

    from connectors.images import not_an_image, too_many_pixels, undecoded

    name = uri if name is None else name
    if "\x00" in uri:  # no file system takes it (Arrow raises ValueError), and a detail should not hold it
        return "missing_image", "names no file: the name holds a NUL character"
    if (normal := key_as_a_path(uri)) is not None:
        try:
            # The writer reads through Arrow, which would read another object in its place ("x/../b.png" as "b.png",
            # "c//d.png" as "c/d.png" where both are there: S3 keys are literal).
            other = climbs(uri) or exists_as_written(uri)
        except Unreadable as error:  # S3 did not say (denied, throttled): for now only
            return "unreadable", f"{name}: cannot read ({error.why})"
        if other:
            part = "'..'" if climbs(uri) else "'.' or empty"
            return "missing_image", (
                f"{name}: cannot read (S3 keys are taken as written, and one with a {part} part is not read as "
                f"written: this is not {normal})"
            )
        # No object has it as written: "./a.png" spells "a.png" another way, which Arrow reads in its place (the
        # earlier release did); it refuses an empty part ("c//d.png"), which is read as "c/d.png" the same way.
        uri = normal
    try:
        fs, path = filesystem(uri)
    except (OSError, ValueError) as error:  # ValueError: a URI Arrow takes for no file ("s3://bucket")
        return "missing_image", f"{name}: cannot read ({_why(error)})"
    try:
        handle = fs.open_input_file(path)
    except OSError as error:
        return _not_read(fs, path, name, error)
    raw = _Reads(handle)
    try:
        with warnings.catch_warnings():
            # Past twice this warning's limit Pillow refuses to open; below it, an images source's default
            # max_pixels is enforced.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BufferedReader(raw, _READ_SIZE)) as image:
                found = image.format or ""
                if found not in IMAGE_EXTENSIONS:
                    accepted = ", ".join(IMAGE_EXTENSIONS)
                    return "unsupported", f"{name}: {found} images are not accepted (accepted: {accepted})"
                # Before decoding (the header gives the size): a small file can decode to gigabytes, per worker.
                if (bomb := too_many_pixels(*image.size, DEFAULT_MAX_PIXELS)) is not None:
                    return bomb.reason, f"{name}: {bomb.detail}"
                try:
                    image.load()
                except Exception as error:  # decoders raise OSError, SyntaxError, ValueError, struct.error, ...
                    if raw.error is not None:
                        raise
                    problem = undecoded(found, error)
                    return problem.reason, f"{name}: {problem.detail}"
    except Image.DecompressionBombError as error:
        return "decompression_bomb", f"{name}: {error}"
    except Exception as error:  # Pillow's plugins raise OSError, SyntaxError, ValueError, struct.error, ...
        if raw.error is not None:  # opened, then not read (an I/O error): for now only
            return "unreadable", f"{name}: cannot read ({_why(raw.error)})"
        return "unsupported", f"{name}: {not_an_image(error)}"
    finally:
        handle.close()
    return None


class ImageCheck:
    """Per batch: the VQA records whose image (a path or URI, with no bytes from the images connector) is
    not there, cannot be read, is not an image the output takes, is over an images source's default pixel limit
    or does not decode, set aside as the images connector sets such a row aside (``missing_image``,
    ``unreadable``, ``unsupported``, ``decompression_bomb``, ``truncated``, ``corrupt``); the rest kept as they are."""

    name = "image_check"

    def __init__(self) -> None:
        # A relative path is the writer's, from the run's working folder: a Ray worker's is another.
        self.folder = os.getcwd()

    def __call__(self, batch: pa.Table) -> StageResult:
        found: dict[str, tuple[str, str] | None] = {}  # an image asked about several times is checked once
        problems: list[tuple[str, str] | None] = [None] * batch.num_rows
        for row, uri in _named_images(batch):
            if uri not in found:
                where = self._where(uri)
                found[uri] = _with_path_tried(image_problem(where, uri), uri, where)
            problems[row] = found[uri]
        if not any(problems):
            return StageResult(kept=batch)
        kept, bad = split_by_mask(batch, pa.array([p is None for p in problems]))
        bad_problems = [p for p in problems if p is not None]
        rows = rows_as_python(bad, as_text=True)[0]
        details = [
            f"{location(r['source'])}: image: {detail}" for r, (_, detail) in zip(rows, bad_problems, strict=True)
        ]
        set_aside = set_aside_rows(
            bad["id"],
            bad["source"],
            self.name,
            "quarantined",
            [reason for reason, _ in bad_problems],
            details,
            [input_record_json(r) for r in rows],
        )
        return StageResult(kept=kept, set_aside=set_aside)

    def _where(self, uri: str) -> str:
        return _where(uri, self.folder)


def _with_path_tried(problem: tuple[str, str] | None, name: str, where: str) -> tuple[str, str] | None:
    """``problem`` of an image not read, with the path tried where the row's ``name`` is another (a relative
    path is the working folder's): a run started from another folder shows why."""
    if problem is None or problem[0] not in ("missing_image", "unreadable") or where == name.removeprefix("file://"):
        return problem
    reason, detail = problem
    said = f"{name}: "
    return (reason, f"{name} ({where}): {detail.removeprefix(said)}") if detail.startswith(said) else problem


def keep_archived(
    sources: list[Source], shape: Callable[[pa.Table], StageResult], published: pa.Array, uris: set[str]
) -> None:
    """Of the ``published`` records (ids) of the inputs ``uris`` this run reads whole again (a line appended to a
    file, a changed SQL table without a cursor or key, or Hugging Face data file), those whose image cannot be read now,
    whatever the reason (inputs are often moved away once taken; a share away, a permission), stay as published:
    carried, not read (``SourceWatermark.kept``), as the images connector keeps such a row's record. Read with
    the rest, each was quarantined (``missing_image``, ``unreadable``) and so left the dataset. Known before the
    run reads (the carry and cross-run dedup leave out the records read again): their rows are read for it here
    (``batches_of``), and each image opened once (a stat, an S3 HEAD)."""
    wanted = published.cast(pa.string())  # Polars hands large strings on
    unopened: dict[str, bool] = {}  # an image several questions ask about is opened once
    for source in sources:
        mark = getattr(source, "watermark", None)
        batches_of = getattr(source, "batches_of", None)  # an images source keeps such rows itself
        again = mark.replaced & uris if mark is not None else set()
        if batches_of is None or not again:
            continue
        for batch in batches_of(again):
            rows = batch.rows.filter(pc.is_in(batch.rows["id"], value_set=wanted)) if batch.rows.num_rows else None
            if rows is None or not rows.num_rows:
                continue
            records = shape(rows).kept
            if "image" not in records.column_names:
                continue
            ids = records["id"].to_pylist()
            for row, uri in _named_images(records):
                if uri not in unopened:
                    unopened[uri] = _cannot_open(_where(uri))
                if unopened[uri]:
                    mark.kept.add(ids[row])


def _named_images(records: pa.Table) -> Iterator[tuple[int, str]]:
    """Each row of ``records`` (and its image) whose image is to be opened here: not one the images connector
    handed on as verified bytes, nor one naming none (validation's to set aside)."""
    held = records["image_bytes"].is_valid().to_pylist() if "image_bytes" in records.column_names else None
    for row, uri in enumerate(records["image"].to_pylist()):
        if uri and not (held and held[row]):
            yield row, uri


def _cannot_open(uri: str) -> bool:
    """Whether the image at ``uri`` cannot be opened now: not there, a folder, or refused (for now or not)."""
    try:
        fs, path = filesystem(uri)
        fs.open_input_file(path).close()
    except (OSError, ValueError):
        return True
    return False


def _where(uri: str, folder: str | None = None) -> str:
    """``uri`` as the writer, on the run's machine (its working ``folder``), finds it (``filesystem``)."""
    return uri if is_s3(uri) else os.path.join(folder or os.getcwd(), uri.removeprefix("file://"))
