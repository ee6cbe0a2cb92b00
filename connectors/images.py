"""Images with questions and answers (VQA, document understanding): a folder or S3 prefix of images
and a JSONL/CSV sidecar of (image, question, answer) rows.

Every image is decoded and verified with Pillow before it becomes a record. Corrupt, truncated,
oversized (decompression bomb) and unsupported images are quarantined with the reason; the run
goes on. What is kept is re-encoded from its pixels only, so EXIF (GPS position, camera, owner),
XMP and other metadata never leave; the EXIF orientation is applied first so the image still
looks the same. Rows carry the image's bytes in ``image_bytes``; the VQA output format writes them
beside the shards, so the published dataset is self-contained.
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
import unicodedata
import warnings
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from PIL import Image, ImageOps, UnidentifiedImageError

from connectors.base import SourceBatch, plain_strings, utf8_texts
from connectors.files import FilesSourceReader, LineCounter, file_format
from connectors.state import UNREAD, SourceWatermark, file_fingerprints, file_value, fingerprint, kept_value
from connectors.storage import (
    Changed,
    FileEntry,
    NotThere,
    StorageError,
    climbs,
    filesystem,
    is_s3,
    join,
    key_as_a_path,
    list_files,
    open_input,
    open_listed,
    os_reason,
    path_of,
)
from schemas.config import FilesSource, ImagesSource
from schemas.manifest import InputFile
from schemas.records import INPUT_LINE_COLUMN, SOURCE_TYPE, input_record_json, set_aside_rows

CONNECTOR = "images"
# How the detail of a row naming something the listing did not find and that cannot be read (a folder) ends: the
# row's fault, which no run reads again as it is, unlike an image listed then not read for now (``record_set_aside``
# tells the two apart by it).
NOT_LISTED = "not a file of the source's listing"
IMAGES_PER_BATCH = 256  # decoded images are held in memory per batch: keep that bounded
HASH_BYTES = 1024 * 1024  # a sidecar is hashed a block of this size at a time
PARSED_BYTES = 256 * 1024 * 1024  # edited sidecars' rows kept from planning for the read, at most
REENCODE = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WEBP", "GIF": "PNG", "BMP": "PNG", "TIFF": "PNG"}
PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B")  # the modes Pillow writes as PNG
# JPEG and WebP quality of every re-encoding of a kept image (here and after OCR redaction), so that
# redacting a picture does not also blur it (Pillow's defaults are 75 and 80).
ENCODE_QUALITY = 95


class ImageProblem(Exception):
    def __init__(self, reason: str, detail: str, retry: bool = False) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail
        self.retry = retry  # the file's reading failed, not its content: the next run tries it again


@dataclass(frozen=True)
class CleanImage:
    data: bytes
    format: str
    size: tuple[int, int]


def clean_image(data: bytes, formats: list[str], max_pixels: int, max_side: int | None = None) -> CleanImage:
    """The image verified, without metadata, optionally resized; ``ImageProblem`` says why not."""
    with warnings.catch_warnings():
        # We enforce our own pixel limit below; Pillow's global one only warns (or errors at twice it).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        whole = None  # the bytes a WebP cut short says it holds
        try:
            with Image.open(io.BytesIO(data)) as probe:
                fmt, (width, height) = probe.format or "", probe.size
        except Image.DecompressionBombError as error:
            raise ImageProblem("decompression_bomb", str(error)) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            # Pillow opens a WebP by decoding it, so one cut short does not open; its RIFF header tells it apart.
            if (whole := _webp_cut_short(data)) is None:
                raise ImageProblem("unsupported", not_an_image(error)) from None
            fmt, width, height = "WEBP", 0, 0
        # Pillow names a JPEG that holds more pictures (a phone camera's depth map or preview, CIPA's
        # Multi-Picture Format) MPO; its first picture is the photo, a JPEG, and only that is kept.
        fmt = "JPEG" if fmt == "MPO" else fmt
        if fmt not in formats:
            raise ImageProblem("unsupported", f"{fmt} images are not accepted (accepted: {', '.join(formats)})")
        if whole is not None:
            raise ImageProblem(
                "truncated", f"WEBP image is cut short: {len(data)} of the {whole} bytes its header gives"
            )
        if (bomb := too_many_pixels(width, height, max_pixels)) is not None:
            raise bomb
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.verify()  # checks structure and checksums without decoding
            with Image.open(io.BytesIO(data)) as image:
                image.load()  # decodes every pixel: catches truncated data that verify() lets through
                upright = ImageOps.exif_transpose(image)
        except Exception as error:  # decoders raise OSError, SyntaxError, ValueError, struct.error, ...
            raise undecoded(fmt, error) from None
    out_format = REENCODE[fmt]
    buffer = io.BytesIO()
    try:
        clean = _rebuilt(upright, out_format, max_side)
        clean.save(buffer, format=out_format, **encode_options(out_format))
    except (OSError, ValueError) as error:  # a mode Pillow cannot resize or write: this image's row, not the run
        raise ImageProblem(
            "unsupported", f"{fmt} image in mode {upright.mode} cannot be resized or re-encoded: {error}"
        ) from None
    return CleanImage(buffer.getvalue(), out_format, clean.size)


def too_many_pixels(width: int, height: int, max_pixels: int) -> ImageProblem | None:
    """``decompression_bomb`` where an image of ``width`` x ``height`` (its header's) is over ``max_pixels``."""
    if width * height <= max_pixels:
        return None
    return ImageProblem(
        "decompression_bomb", f"{width}x{height} is {width * height} pixels, over max_pixels {max_pixels}"
    )


def not_an_image(error: Exception) -> str:
    """The detail of bytes Pillow did not open, with its own reason where it gave one (a PNG text chunk too
    large to decompress); not where it found no format, whose message only shows the file object's address."""
    why = str(error).strip().splitlines()
    if isinstance(error, UnidentifiedImageError) or not why:
        return "not an image Pillow can read"
    return f"not an image Pillow can read ({why[0]})"


def undecoded(fmt: str, error: Exception) -> ImageProblem:
    """Why an image of ``fmt`` that Pillow opened did not decode (``error``): ``truncated`` where its data
    ends early, else ``corrupt``."""
    reason = "truncated" if "truncated" in str(error).lower() else "corrupt"
    return ImageProblem(reason, f"{fmt} image does not decode: {error}")


def _webp_cut_short(data: bytes) -> int | None:
    """The size a WebP's RIFF header gives, where ``data`` is shorter than that; else None."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    whole = int.from_bytes(data[4:8], "little") + 8
    return whole if len(data) < whole else None


def _rebuilt(upright: Image.Image, out_format: str, max_side: int | None) -> Image.Image:
    """``upright`` rebuilt from its pixels, so nothing of the original's metadata (EXIF, XMP, ICC,
    comments) is carried, resized to ``max_side``, in a mode ``out_format`` holds."""
    clean = Image.frombytes(upright.mode, upright.size, upright.tobytes())
    if upright.mode == "P":
        clean.putpalette(upright.getpalette())
    clean = _eight_bit_grey(clean)
    if max_side is not None and max(clean.size) > max_side:
        clean.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if "transparency" in upright.info:  # a palette or colour drawn transparent: pixels, not metadata
        clean.info["transparency"] = upright.info["transparency"]
    if out_format == "JPEG" and clean.mode not in ("RGB", "L", "CMYK"):
        return clean.convert("RGB")
    if out_format == "PNG" and clean.mode not in PNG_MODES:
        # A TIFF scan in CMYK, YCbCr or LAB: PNG cannot hold it.
        return clean.convert("RGBA" if clean.mode in ("PA", "RGBa", "La") else "RGB")
    return clean


def _eight_bit_grey(image: Image.Image) -> Image.Image:
    """Greyscale of 16 or 32 bits, or float (``I;16*``, ``I``, ``F``), as 8-bit grey (``L``): a trainer's
    processor converts the image to RGB, which clips every sample over 255, so a 16-bit scan reached it as a
    white page. Samples are scaled from the bit depth the largest one needs (at least 8), as a viewer shows a
    12-bit scan (0-4095) or a 16-bit one: samples all of 0-255 (8-bit values widened) are kept, which that
    conversion never clipped, and scaling by the 16-bit range alone made a 12-bit scan near black. Negative
    samples (``I``) are taken as 0. Other modes are returned as they are."""
    if image.mode in ("I", "F"):
        image = _sixteen_bit(image)
    if not image.mode.startswith("I;16"):
        return image
    samples = np.asarray(image).astype(np.float64)
    bits = max(8, int(samples.max(initial=0)).bit_length())
    samples = np.rint(samples * (255 / (2**bits - 1)))
    return Image.fromarray(samples.astype(np.uint8))  # 2-D uint8: mode L


def _sixteen_bit(image: Image.Image) -> Image.Image:
    """A greyscale TIFF of 32-bit int or float samples (``I``, ``F``) as 16-bit greyscale: samples past 65535
    scaled into it, a float image of 0-1 spread over it."""
    samples = np.clip(np.asarray(image, dtype=np.float64), 0, None)
    top = float(samples.max(initial=0))
    if top > 65535 or (image.mode == "F" and 0 < top <= 1):
        samples = samples * (65535 / top)
    return Image.fromarray(np.rint(samples).astype(np.uint16))  # 2-D uint16: mode I;16


def encode_options(image_format: str) -> dict[str, int]:
    """What ``Image.save`` is given to write a kept image in ``image_format``."""
    return {"quality": ENCODE_QUALITY} if image_format in ("JPEG", "WEBP") else {}


def eight_bit(image: Image.Image) -> Image.Image:
    """``image`` with 8-bit samples, as OCR and perceptual hashing read it. A 16-bit greyscale scan
    (``I;16*``, or ``I`` as Pillow may open one) is scaled from its own range (0 to its largest sample,
    at least 255) to 0-255: Pillow's own conversion clips every sample over 255, so a scan using the
    16-bit range read as a white page; shifted by 8 bits, one holding 8-bit values (widened, not
    scaled) read as a black one."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        samples = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        top = max(int(samples.max(initial=0)), 255)
        return Image.fromarray((samples * 255 // top).astype(np.uint8))  # 2-D uint8: mode L
    return image


def shows_through(image: Image.Image) -> bool:
    """Whether part of ``image`` may be see-through: an alpha channel (straight or premultiplied), or a
    palette entry or colour drawn transparent (``transparency``), which RGBA keeps and RGB or JPEG loses."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


class _Hashed:
    """The size, xxh3 and line count (``LineCounter``) of bytes given a block at a time: what ``len``,
    ``xxh3_128_hexdigest`` and ``lines_in`` give of them whole (the values a sidecar's watermark keeps)."""

    def __init__(self) -> None:
        self.size, self._hash, self._lines = 0, xxhash.xxh3_128(), LineCounter()

    def update(self, block: bytes) -> None:
        self.size += len(block)
        self._hash.update(block)
        self._lines.update(block)

    @property
    def xxh3(self) -> str:
        return self._hash.hexdigest()

    @property
    def lines(self) -> int:
        return self._lines.lines


class ImagesSourceReader:
    name = CONNECTOR

    def __init__(
        self,
        config: ImagesSource,
        batch_rows: int,
        watermark: SourceWatermark | None = None,
        keyed: Collection[str] = (),
    ) -> None:
        self.config, self.watermark = config, watermark
        self.batch_rows = min(batch_rows, IMAGES_PER_BATCH)
        # ``keyed``: the record's columns whose absence is not null (``Shape.keyed``), as the renamed sidecar
        # names them. A JSONL sidecar's batch gets each of them, and the columns this source names, where any
        # line of the file has it: a row lacking one is then what it is whatever lines it is batched with.
        renamed = {"image": config.image_column, "question": config.question_column, "answer": config.answer_column}
        named = {getattr(config, setting) for setting in _named_settings(config)}  # ``absent_columns``'
        sidecar_keyed = {renamed.get(name, name) for name in keyed} | named
        self.sidecar = FilesSourceReader(FilesSource(path=config.sidecar), self.batch_rows, keyed=sidecar_keyed)
        self._fingerprints: dict[str, str] | None = None
        self._listed: dict[str, FileEntry] = {}  # image URI -> its listing
        self._forms: dict[str, str] | None = None  # a listed image's URI in NFC -> that URI
        self._digests: dict[str, str] = {}  # image URI -> the xxh3 of its bytes, once read
        self._changed: set[str] | None = None
        self._taken_lines: dict[str, float] = {}  # sidecar URI -> how many of its lines an earlier run read
        self._parsed: dict[str, list[SourceBatch]] = {}  # an edited sidecar's batches, parsed at planning
        self._compared: dict[str, tuple[bool, float]] = {}  # sidecar URI -> edited?, lines taken before
        self._hashed_lines: dict[str, float] = {}  # sidecar URI -> the lines its staged watermark holds
        self._archived_rows: dict[str, set[str]] = {}  # an edited sidecar's URI -> its rows ``_archived`` keeps

    def __getstate__(self) -> dict:
        # A copy shipped to a Ray read task parses its sidecar again: the batches kept from planning (up to
        # PARSED_BYTES) would travel in every task's arguments and stay in the object store for the run.
        return {**self.__dict__, "_parsed": {}}

    def inputs(self) -> list[InputFile]:
        self.changed_sidecars()
        inputs = self.sidecar.inputs()
        # A folder that is not there (or holds nothing) on the source's first run is most likely the wrong
        # path: every row would be quarantined as missing_image and an empty version published.
        if not self.fingerprints() and not (self.watermark is not None and self.watermark.committed):
            raise StorageError(f"{self.config.path}: no such folder, or no file in it (the images the sidecar names)")
        return inputs

    def records_again(self) -> set[str]:
        """The sidecars whose published records a run may write again under their ids: a row whose image
        changed in place is read again, the sidecar itself unchanged."""
        if self.watermark is None or not self.watermark.committed:
            return set()
        return {entry.uri for entry in self.sidecar.entries()}

    def list_again(self) -> None:
        self._changed = None  # inputs were added to ``read_again``: which sidecars are read again is asked again

    def changed_sidecars(self) -> set[str]:
        """Sidecar files edited since an earlier run took them: every row of theirs is taken again and
        replaces what they gave before (a corrected answer must not stay beside the old one). A sidecar
        that only grew at its end (rows appended) is not: its rows taken before are skipped as ever.
        Each is read and compared once per run, however often the source is listed."""
        if self._changed is None:
            self._changed, self._taken_lines = set(), {}
            if self.watermark is not None:
                for entry in self.sidecar.entries():
                    if entry.uri not in self._compared:
                        self._compared[entry.uri] = self._compare(self.watermark, entry)
                    edited, taken = self._compared[entry.uri]
                    taken_before = f"sidecar:{entry.uri}" in self.watermark.committed
                    if edited or (taken_before and entry.uri in self.watermark.read_again):
                        self._changed.add(entry.uri)
                        self.watermark.replaced.add(entry.uri)
                        if entry.uri not in self._archived_rows:
                            self._archived_rows[entry.uri] = self._archived(entry)
                        self.watermark.kept |= self._archived_rows[entry.uri]
                    else:
                        self._taken_lines[entry.uri] = taken
        return self._changed

    def _compare(self, watermark: SourceWatermark, entry: FileEntry) -> tuple[bool, float]:
        """Whether the sidecar was edited since an earlier run took it, and how many of its lines that run
        read; stages its watermark now."""
        item = f"sidecar:{entry.uri}"
        before = watermark.get(item)
        listed = fingerprint(entry)  # the listing's (S3 ETag, or size and mtime), taken before any byte is read
        if before is not None and before.get("fingerprint") == listed:
            # As the run that hashed it listed it (S3 ETag, or size and mtime): unchanged, and not read
            # for its hash again, only for its rows, up to the lines that run hashed.
            lines = math.inf if before["lines"] is None else before["lines"]
            self._hashed_lines[entry.uri] = lines
            return False, lines
        fs, path = filesystem(entry.uri)
        whole, taken = _Hashed(), _Hashed()  # taken: the bytes the earlier run hashed, as they are now
        limit = before["bytes"] if before is not None else 0
        with open_input(fs, path, entry.etag) as stream:  # unpacks a gzip or zstd sidecar: its lines are counted
            while block := stream.read(HASH_BYTES):  # a block at a time: a sidecar may be larger than memory
                if whole.size < limit:
                    taken.update(block[: limit - whole.size])
                whole.update(block)
        parquet = file_format(entry.uri, self.sidecar.config.format) == "parquet"
        # Its rows are read again from the file: those on lines appended since these bytes are left to
        # the next run, which finds them past the watermark (taken now, they would be taken again).
        self._hashed_lines[entry.uri] = math.inf if parquet else whole.lines
        # Its listing's fingerprint, taken before these bytes were read: a sidecar appended meanwhile has
        # another one by the next run, which compares its bytes.
        watermark.set(
            item,
            {
                "bytes": whole.size,
                "xxh3": whole.xxh3,
                "fingerprint": listed,
                "lines": None if parquet else self._hashed_lines[entry.uri],
            },
        )
        if before is None:
            return False, 0
        if taken.xxh3 != before["xxh3"]:
            return True, 0
        if parquet:
            return False, math.inf  # its rows are numbered, not its lines, and none is appended in place
        return False, taken.lines

    def _archived(self, entry: FileEntry) -> set[str]:
        """The ids of a sidecar's rows whose image an earlier run took and that is gone now: read again
        (the sidecar changed), such a row keeps its published record (``_is_new``), which this run's
        reading of the sidecar must not replace."""
        found: set[str] = set()
        parsed: list[SourceBatch] | None = []
        size = sum(_size(batch) for batches in self._parsed.values() for batch in batches)
        for batch in self.sidecar.limited_to([entry]).batches():
            size += _size(batch)
            # Kept for the read, which would parse the sidecar again, while memory allows.
            if parsed is not None and size <= PARSED_BYTES:
                parsed.append(batch)
            else:
                parsed = None
            if not batch.rows.num_rows:
                continue
            rows, column = plain_strings(batch.rows), self.config.image_column
            # Named as the read names them (``_names``): a name made bytes by a neighbour not UTF-8 too.
            names = _names(rows[column], column)[0] if column in rows.column_names else [None] * rows.num_rows
            for row, name in zip(rows.to_pylist(), names, strict=True):
                if self._archived_image(row, _row_item(row), name):
                    found.add(row["id"])
        if parsed is not None:
            self._parsed[entry.uri] = parsed
        return found

    def _archived_image(self, row: dict, item: str, name: str | None) -> bool:
        """Whether the row's image was taken by an earlier run and is not in the folder now."""
        fingerprint = self.fingerprints().get(self._image_uri(name)) if name else None
        return (
            fingerprint is None
            and self.watermark is not None
            and self.watermark.get(self._committed_item(row, item)) not in (None, UNREAD)
        )

    def _committed_item(self, row: dict, item: str) -> str:
        """The item an earlier run committed the row's watermark under: ``_row_item``, else the item
        written before its UTF-8 bytes were read as text, or before nulls were left out of it
        (``_row_items_before``). Without that look-up the first run after an upgrade would take every
        row holding a null (or bytes) again (republished, or quarantined as
        missing_image where its image was moved away, its record then leaving the dataset); ``_is_new``
        stages the row under its new item (``item``, its ``_row_item``), so the old one is looked up only
        until then."""
        if self.watermark is None or item in self.watermark.committed:
            return item
        return next((before for before in _row_items_before(row) if before in self.watermark.committed), item)

    def fingerprints(self) -> dict[str, str]:
        """Image URI -> fingerprint, so a rerun takes a row again when its image changed. A folder that is
        not there holds nothing (``inputs`` decides about that); one that cannot be listed (denied, a
        share or bucket away) fails the run: taken as empty, its images would read as moved away."""
        if self._fingerprints is None:
            try:
                listed = list_files(self.config.path)
            except NotThere:
                listed = []
            self._listed = {entry.uri: entry for entry in listed}
            self._fingerprints = file_fingerprints(listed)
        return self._fingerprints

    def batches(self) -> Iterator[SourceBatch]:
        for entry in self.sidecar.entries():
            batches = self._parsed.pop(entry.uri, None) or self.sidecar.limited_to([entry]).batches()
            yield from self._batches(_up_to(batches, self._hashed_lines.get(entry.uri, math.inf)))

    def _batches(self, sidecar: Iterable[SourceBatch]) -> Iterator[SourceBatch]:
        for batch in sidecar:
            set_aside = self._not_seen(_as_images(batch.set_aside))
            if batch.rows.num_rows == 0:
                yield SourceBatch(rows=pa.table({}), set_aside=set_aside, input_bytes=batch.input_bytes)
                continue
            rows, bad = self._images(batch.rows)
            yield SourceBatch(rows=rows, set_aside=pa.concat_tables([set_aside, bad]), input_bytes=batch.input_bytes)

    def _images(self, table: pa.Table) -> tuple[pa.Table, pa.Table]:
        config = self.config
        table = table.set_column(1, "source", _as_images_source(table["source"]))
        table = plain_strings(table)  # JSONL blocks come as large_string, single lines as string
        if config.image_column not in table.column_names:
            names, not_text = [None] * table.num_rows, [None] * table.num_rows
        else:
            names, not_text = _names(table[config.image_column], config.image_column)
        cache: dict[str, CleanImage | ImageProblem] = {}
        keep, payload, problems = [], [], []
        rows = table.to_pylist()
        # A sidecar without a column the recipe names (a misspelt image_column, or a question_column or
        # answer_column the recipe sets): a missing column, so a run in which no row has it fails as a
        # recipe error naming the setting, as for a record field's column. A misspelt question_column
        # would otherwise leave the sidecar's "question" column in use, or report that one missing.
        absent = self.absent_columns(table.column_names)
        no_column = ImageProblem("missing_column", "; ".join(absent)) if absent else None
        no_name = ImageProblem("missing_image", "the row names no image")
        for row, name, unnamed in zip(rows, names, not_text, strict=True):
            result: CleanImage | ImageProblem | None = None  # None: taken by an earlier run, left out
            item = _row_item(row) if self.watermark is not None else ""  # hashed once per row
            if self._is_new(row, item, name):
                result = no_column or unnamed or (self._image(name, cache) if name else no_name)
                if self.watermark is not None and name and result is not no_column:
                    self._taken(self.watermark, item, name, result)
            keep.append(isinstance(result, CleanImage))
            payload.append(result.data if isinstance(result, CleanImage) else None)
            problems.append(result if isinstance(result, ImageProblem) else None)
        mask = pa.array(keep)
        kept = table.filter(mask)
        kept = kept.append_column(
            "image_bytes", pa.array([p for p, k in zip(payload, keep, strict=True) if k], pa.binary())
        )
        kept = _rename(
            kept, {config.image_column: "image", config.question_column: "question", config.answer_column: "answer"}
        )
        bad_mask = pa.array([p is not None for p in problems])
        bad = table.filter(bad_mask)
        bad_problems = [p for p in problems if p is not None]
        bad_rows = [r for r, p in zip(rows, problems, strict=True) if p is not None]
        bad_names = [n for n, p in zip(names, problems, strict=True) if p is not None]
        set_aside = set_aside_rows(
            bad["id"],
            bad["source"],
            stage="read",
            outcome="quarantined",
            reasons=[p.reason for p in bad_problems],
            details=[
                f"{r['source']['uri']}:{r['source']['line']}: "
                + (p.detail if p in (no_name, no_column) or n is None else f"{n}: {p.detail}")
                for r, p, n in zip(bad_rows, bad_problems, bad_names, strict=True)
            ],
            records=[input_record_json(r) for r in bad_rows],
        )
        return kept, set_aside

    def absent_columns(self, columns: list[str]) -> list[str]:
        """What the sidecar's columns lack of those the recipe names (``_named_settings``)."""
        config = self.config
        return [
            f"column {getattr(config, s)!r} ({s}) is missing"
            for s in _named_settings(config)
            if getattr(config, s) not in columns
        ]

    def entries(self) -> list[FileEntry]:
        """The sidecar files, for ``curation check``."""
        return self.sidecar.entries()

    def head(self, entry: FileEntry) -> SourceBatch:
        """For ``curation check``: the first rows of a sidecar file as this source gives them, with its
        columns named as the records' fields, and without opening an image (each row's ``image_bytes``
        is null): what a run refuses of the file, or of rows lacking a column the recipe names, shows."""
        batch = self.sidecar.head(entry)
        set_aside, rows = _as_images(batch.set_aside), batch.rows
        if not rows.num_rows:
            return SourceBatch(rows=rows, set_aside=set_aside)
        rows = plain_strings(rows.set_column(1, "source", _as_images_source(rows["source"])))
        absent = self.absent_columns(rows.column_names)
        if absent:
            details = [f"{s['uri']}:{s['line']}: {'; '.join(absent)}" for s in rows["source"].to_pylist()]
            missing = set_aside_rows(rows["id"], rows["source"], "read", "quarantined", "missing_column", details)
            return SourceBatch(rows=rows.slice(0, 0), set_aside=pa.concat_tables([set_aside, missing]))
        config = self.config
        rows = _rename(
            rows, {config.image_column: "image", config.question_column: "question", config.answer_column: "answer"}
        )
        return SourceBatch(
            rows=rows.append_column("image_bytes", pa.nulls(rows.num_rows, pa.binary())), set_aside=set_aside
        )

    def _not_seen(self, set_aside: pa.Table) -> pa.Table:
        """Sidecar lines that did not parse, less those an earlier run already quarantined."""
        if self.watermark is None or set_aside.num_rows == 0:
            return set_aside
        fresh = []
        for record_id in set_aside["id"].to_pylist():
            item = f"bad:{record_id}"
            fresh.append(self.watermark.is_new(item, True))
            self.watermark.set(item, True)
        return set_aside.filter(pa.array(fresh))

    def _image(self, name: str, cache: dict[str, CleanImage | ImageProblem]) -> CleanImage | ImageProblem:
        if name not in cache and "\x00" in name:  # no file system takes it (Python raises ValueError)
            cache[name] = ImageProblem("missing_image", "names no file: the name holds a NUL character")
        if name not in cache and _outside(name):
            # The sidecar names images in the source's folder: "../other/x.png" or "/etc/x.png" would
            # publish a file the recipe never pointed at.
            cache[name] = ImageProblem("missing_image", f"names a file outside {self.config.path}")
        if name not in cache and (away := self._linked_away(name)) is not None:
            # Nor through a link in the folder (to a file, or a folder, elsewhere): the review page, which
            # checks the path as the file system finds it, would refuse to show what was published.
            cache[name] = ImageProblem("missing_image", f"is a link to {away}, outside {self.config.path}")
        if (
            name not in cache
            and (normal := key_as_a_path(uri := self._image_uri(name)))
            and uri not in self.fingerprints()
        ):
            # Arrow would read the object of the path the key spells ("x/../b.png" as "b.png"), another picture;
            # a listed key is read as written (``open_listed``).
            cache[name] = ImageProblem(
                "missing_image", f"cannot read {uri} (S3 keys are taken as written: this is not {normal}): {NOT_LISTED}"
            )
        if name not in cache:
            uri = self._image_uri(name)
            fs, path = filesystem(uri)
            etag = self._listed[uri].etag if uri in self._listed else None
            try:
                # An S3 image is read as listed: its row's watermark is staged with the listed ETag.
                with fs.open_input_stream(path) if etag is None else open_listed(uri, etag) as stream:
                    data = stream.read()
            except OSError as error:
                if uri not in self.fingerprints():  # not a file the listing found (a folder): the name's fault
                    missing = isinstance(error, FileNotFoundError) or "not found" in str(error).lower()
                    reason = "missing_image" if missing else "unreadable"
                    cache[name] = ImageProblem(reason, f"cannot read {uri}{self._in_another_form(uri)}: {NOT_LISTED}")
                else:  # listed, then not read (a permission, a share away, moved meanwhile): for now only
                    why = os_reason(error)
                    if isinstance(error, Changed):
                        why = "overwritten since the run listed it"
                    # ``unreadable`` even where it was moved away: read again, as that reason's rows are, and its
                    # detail says by what (``curation.executors.local.reads_again``), which depends on the run.
                    cache[name] = ImageProblem("unreadable", f"cannot read {uri} ({why})", retry=True)
                return cache[name]
            self._digests[uri] = xxhash.xxh3_128_hexdigest(data)
            try:
                cache[name] = clean_image(data, list(self.config.formats), self.config.max_pixels, self.config.max_side)
            except ImageProblem as problem:
                cache[name] = problem
        return cache[name]

    def _linked_away(self, name: str) -> str | None:
        """Where the local image ``name`` is found, with links followed, when that is outside the source's
        folder (itself resolved: a folder reached through a link is fine); None when inside, or on S3,
        which has no links."""
        uri = self._image_uri(name)
        if is_s3(uri):
            return None
        folder, found = os.path.realpath(path_of(self.config.path)), os.path.realpath(path_of(uri))
        return None if os.path.commonpath([folder, found]) == folder else found

    def _image_uri(self, name: str) -> str:
        """Where the image a sidecar names is, as the folder's listing names it. On local disk "./a.png"
        and "scans//a.png" are "a.png" and "scans/a.png" there, so a change to the image is seen; a local
        folder is listed under its normalised path ("recipes/../data/img" as "data/img"); the recipe's
        path keeps its "..", which is in the source's key (normalised there, a source's next run would
        start afresh). On S3 a name is its key as written: "x/../b.png" is no path to "b.png" but another
        object's key, which S3 does not resolve. But where the key as written is not listed and its
        normalised one is, a name with no ".." part ("./a.png", "scans//c.png") is that key: the earlier
        release read it so, and its records keep their image's URI (a change to the image is seen)."""
        normal = join(self.config.path, posixpath.normpath(name))
        if not is_s3(self.config.path):
            return path_of(normal)
        uri = join(self.config.path, name)
        listed = self.fingerprints()
        return normal if uri not in listed and normal in listed and not climbs(name) else uri

    def _in_another_form(self, uri: str) -> str:
        """What the detail of an image ``uri`` not listed adds where a listed file's name differs from it
        only by its Unicode form (macOS writes names decomposed, NFD; an editor types them composed, NFC):
        the two look the same to whoever reads the detail. Said, not matched: a name is read as written."""
        if self._forms is None:
            self._forms = {unicodedata.normalize("NFC", listed): listed for listed in self.fingerprints()}
        other = self._forms.get(unicodedata.normalize("NFC", uri))
        if other is None or other == uri:
            return ""
        name = os.path.relpath(path_of(other), path_of(self.config.path))
        return f" (a file named so in another Unicode form is there: {name!a})"

    def _is_new(self, row: dict, item: str, name: str | None) -> bool:
        """Whether this (image, question, answer) row (``item``: its ``_row_item``), with its image as it is
        now, was taken before."""
        if self.watermark is None:
            return True
        fingerprint = self.fingerprints().get(self._image_uri(name)) if name else None
        uri, line = row["source"]["uri"], row["source"]["line"]
        reread = uri in self.changed_sidecars()
        if not reread and line is not None and line > self._taken_lines.get(uri, 0):
            # A line no earlier run read (appended, or in a sidecar new to the source): a row of its own
            # even where the same image, question and answer were taken before from another line, so it
            # is counted (and found a duplicate by a dedup stage) rather than left out unseen.
            self.watermark.set(item, fingerprint)
            return True
        committed = self._committed_item(row, item)
        if committed != item:  # written the old way: kept under the new item (a path below may set it anew)
            self.watermark.set(item, self.watermark.committed[committed])
        if self._archived_image(row, item, name):
            # Its image was taken and has been moved away since (inputs often are, once taken): its
            # record stays, as a deleted input file's do, rather than be quarantined as missing_image
            # and so replace its published copy (its sidecar read again: ``_archived``). Its watermark
            # stays too: the image back, changed or not, is told apart as ever.
            return False
        if committed in self.watermark.committed and not reread:
            before = self.watermark.committed[committed]
            entry = self._listed.get(self._image_uri(name)) if name else None
            if entry is None and before is None:  # no image then, none now
                return False
            kept = kept_value(before, entry, self.watermark.digests) if entry is not None else None
            if kept is not None:
                if kept != before:  # a restored image's new mtime: kept, so it is not hashed again
                    self.watermark.set(item, kept)
                return False
            self.watermark.reread = True
        self.watermark.set(item, fingerprint)
        return True

    def _taken(self, watermark: SourceWatermark, item: str, name: str, result: CleanImage | ImageProblem) -> None:
        """Stage the row's watermark (``item``) as its image was read: with the hash of its bytes
        (``file_value``), or ``UNREAD`` when they could not be read for now."""
        uri = self._image_uri(name)
        if isinstance(result, ImageProblem) and result.retry:
            watermark.set(item, UNREAD)
        elif uri in self._digests and uri in self._listed:
            watermark.set(item, file_value(self._listed[uri], self._digests[uri]))


def _named_settings(config: ImagesSource) -> list[str]:
    """The settings naming sidecar columns a row must have: the image column, and the question and answer
    columns where the recipe sets them (else the record's own fields say what they need)."""
    return ["image_column"] + [s for s in ("question_column", "answer_column") if s in config.model_fields_set]


def _up_to(batches: Iterable[SourceBatch], last_line: float) -> Iterator[SourceBatch]:
    """The batches' rows and set-aside lines on the sidecar's first ``last_line`` lines."""
    for batch in batches:
        if last_line != math.inf:
            batch = SourceBatch(
                rows=_on_lines(batch.rows, last_line),
                set_aside=_on_lines(batch.set_aside, last_line),
                input_bytes=batch.input_bytes,
            )
        yield batch


def _on_lines(table: pa.Table, last_line: float) -> pa.Table:
    if not table.num_rows:
        return table
    return table.filter(pc.fill_null(pc.less_equal(pc.struct_field(table["source"], "line"), int(last_line)), True))


def _size(batch: SourceBatch) -> int:
    return batch.rows.nbytes + batch.set_aside.nbytes


def _names(values: pa.ChunkedArray, column: str) -> tuple[list[str | None], list[ImageProblem | None]]:
    """The image names a sidecar column holds, and for each one that is not UTF-8 text its problem: the
    files connector hands a Parquet text column holding such a value over as binary (``not_utf8_as_binary``),
    which a cast to text refused with a traceback."""
    if not (pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type)):
        return pc.cast(values, pa.string()).to_pylist(), [None] * len(values)
    names, problems = utf8_texts(values.to_pylist(), column)
    return names, [None if problem is None else ImageProblem("schema", problem) for problem in problems]


def _row_item(row: dict) -> str:
    """A sidecar row's watermark item: its (image, question, answer) values, not its place, nor its line's
    text (``INPUT_LINE_COLUMN``: handed on only where its JSONL block holds a null, so not in every run),
    nor its nulls: a JSONL block has a column for every key any of its lines has, so a line with a new
    key would otherwise change the item of every other row of its block. Bytes that are UTF-8 are their
    text: a Parquet text column is handed on as bytes in a batch where another row's value is not UTF-8
    (``not_utf8_as_binary``), which would otherwise change the item of every row of that batch."""
    return _item_of(_without_nulls(_as_text(_row_values(row))))


def _row_items_before(row: dict) -> list[str]:
    """A row's watermark item as earlier runs wrote it (``_committed_item``): with its bytes as Python
    writes them (before ``_row_item`` read them as text), and, earlier, with its nulls too."""
    return [_item_of(_without_nulls(_row_values(row))), _item_of(_row_values(row))]


def _row_values(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("id", "source", INPUT_LINE_COLUMN)}


def _item_of(values: object) -> str:
    return "row:" + xxhash.xxh3_128_hexdigest(json.dumps(values, sort_keys=True, default=str).encode())


def _as_text(value: object) -> object:
    """``value`` with the bytes in it that are UTF-8 as their text, nested ones too."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    if isinstance(value, dict):
        return {k: _as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_text(v) for v in value]
    return value


def _without_nulls(value: object) -> object:
    """``value`` with the null fields of its mappings left out, nested ones too (a struct's fields are
    those of every line of the block); a list keeps its nulls, which are its own."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _outside(name: str) -> bool:
    """Whether a sidecar's image name points out of the images folder: absolute, a URI, or up past it."""
    normal = posixpath.normpath(name.replace("\\", "/"))
    return posixpath.isabs(normal) or "://" in name or normal == ".." or normal.startswith("../")


def _as_images_source(sources: pa.ChunkedArray | pa.Array) -> pa.StructArray:
    """The sidecar reader's ``source`` with this connector's name: rows come from the sidecar's lines."""
    sources = sources.combine_chunks() if isinstance(sources, pa.ChunkedArray) else sources
    connector = pa.array([CONNECTOR] * len(sources), pa.string())
    fields = [connector] + [sources.field(i) for i in range(1, sources.type.num_fields)]
    return pa.StructArray.from_arrays(fields, fields=list(SOURCE_TYPE))


def _as_images(set_aside: pa.Table) -> pa.Table:
    if set_aside.num_rows == 0:
        return set_aside
    return set_aside.set_column(1, "source", _as_images_source(set_aside["source"]))


def _rename(table: pa.Table, names: dict[str, str]) -> pa.Table:
    """Sidecar columns to the VQA names; a column already bearing a target name gives way."""
    steps = []
    for source, target in names.items():
        if source != target and source in table.column_names:
            if target in table.column_names:
                table = table.drop_columns([target])
            table = table.rename_columns([target if name == source else name for name in table.column_names])
            steps.append((source, target))
    if steps and INPUT_LINE_COLUMN in table.column_names:
        table = _lines_renamed(table, steps)
    return table


def _lines_renamed(table: pa.Table, steps: list[tuple[str, str]]) -> pa.Table:
    """``table`` with the JSONL line of each row holding a null in a renamed column (``INPUT_LINE_COLUMN``)
    written again with the line's keys renamed as the columns were (``steps``: source, target): a
    quarantined row's record holds the keys its line has (``input_record_json``), so a line's
    ``"q": null`` is its "question", and its own "question" key, which gave way, is not."""
    targets = [target for _, target in steps]
    nulls = np.zeros(table.num_rows, dtype=bool)
    for target in targets:
        nulls |= table[target].is_null().to_numpy(zero_copy_only=False)
    if not nulls.any():
        return table
    lines = table[INPUT_LINE_COLUMN].to_pylist()
    for row in np.flatnonzero(nulls).tolist():
        try:
            value = json.loads(lines[row].decode("utf-8-sig")) if lines[row] is not None else None
        except ValueError:  # a line polars took and Python's json does not: shown as input_record_json shows it
            continue
        if not isinstance(value, dict):
            continue
        for source, target in steps:  # as the columns were renamed, step by step
            value.pop(target, None)
            if source in value:
                value[target] = value.pop(source)
        lines[row] = json.dumps(value).encode()
    at = table.column_names.index(INPUT_LINE_COLUMN)
    return table.set_column(at, INPUT_LINE_COLUMN, pa.array(lines, table.schema.field(at).type))
