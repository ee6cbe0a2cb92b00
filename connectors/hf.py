"""A Hugging Face dataset saved to disk, read as Arrow batches, locally or from S3.

Two layouts are understood:

- what ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` writes (``state.json`` naming the
  Arrow stream files of a split; ``dataset_dict.json`` naming the splits), i.e. what
  ``datasets.load_from_disk`` reads;
- a folder of parquet or ``.arrow`` files as the Hub stores them (``data/train-00000-of-00002.parquet``),
  the split taken from the file name as the Hub, ``push_to_hub`` and the datasets cache write it.

The Arrow files are read directly with pyarrow, batch by batch, so a large dataset streams without
``datasets`` building a cache, and S3 works through the same filesystem layer as every source.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import posixpath
import re
from collections.abc import Collection, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from connectors.base import SourceBatch, plain_strings, with_lineage
from connectors.files import HEAD_BYTES, as_read, not_utf8_as_binary, rows_as_read, split_nested_not_utf8
from connectors.images import IMAGES_PER_BATCH, CleanImage, ImageProblem, clean_image
from connectors.sql import row_contents
from connectors.state import SourceWatermark, less_kept, new_files, read_digest, taken
from connectors.storage import FileEntry, ReadDigest, StorageError, filesystem, join, list_files, open_input, path_of
from schemas.config import HFSource, ImagesSource
from schemas.manifest import InputFile
from schemas.records import (
    RESERVED,
    InputIds,
    empty_set_aside,
    input_name,
    input_record_json,
    reads,
    set_aside_rows,
    source_array,
)

CONNECTOR = "hf"
log = logging.getLogger(__name__)
_SPLIT_IN_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_.]+?)-\d{5}-of-\d{5}(?:-[0-9a-f]{8,})?\.(parquet|arrow)$")
# The rule of releases before push_to_hub's and the cache's names were read: else the file's folder.
_EARLIER_SPLIT_IN_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_.]+?)-\d{5}-of-\d{5}\.(parquet|arrow)$")
_TOP_SPLITS = ("train", "test", "validation")
# The datasets cache's <builder>-<split>-00000-of-00002.arrow, or <builder>-<split>.arrow for one shard (a
# builder's name may hold hyphens: fineweb-edu). One shard is only read so for the three usual splits: any
# other hyphenated name (my-notes.arrow) is no cache file.
_SPLIT_IN_CACHE_NAME = re.compile(
    rf"^.+-(?:(?P<split>[A-Za-z0-9_.]+)-\d{{5}}-of-\d{{5}}|(?P<one>{'|'.join(_TOP_SPLITS)}))\.arrow$"
)
# An Image() feature's pictures pass the checks an `images` source makes by default (an hf source has no
# settings of its own for them): the formats it accepts, its pixel limit, no resizing.
_IMAGE_CHECKS = ImagesSource(type="images", path="", sidecar="")
# The most of a Parquet file's first row group (its columns the recipe reads) ``curation check`` decodes for a
# head: a row group is decoded whole, and an image dataset's can be hundreds of MB (300 MB took 675 MB RSS).
HEAD_ROW_GROUP_BYTES = 64 * HEAD_BYTES


class HeadNotRead(Exception):
    """A data file whose head ``curation check`` leaves to the run; the message says why."""


def _read_json(uri: str) -> dict | None:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as stream:
            return json.loads(stream.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise StorageError(f"{uri}: cannot read: {error}") from None


def _exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return fs.get_file_info(path).type.name == "File"
    except OSError:
        return False


def data_files(
    path: str, split: str | None, entries: list[FileEntry]
) -> tuple[list[tuple[str, str]], bool, dict[str, list[str]]]:
    """(split, file URI) of every data file of the dataset at ``path``, in split and file order, whether
    they are what the dataset's ``state.json`` files name (``save_to_disk``'s layout), and the files of them
    read by the name earlier releases gave them, by the split their names now give (``_named_hub_files``);
    ``entries`` are the parquet and arrow files listed under it."""
    path = path.rstrip("/")
    if _exists(join(path, "dataset_dict.json")):
        splits = (_read_json(join(path, "dataset_dict.json")) or {}).get("splits", [])
        if split is not None and split not in splits:
            raise StorageError(f"{path}: no split {split!r}; the dataset has {splits}")
        named = [item for name in splits if split in (None, name) for item in _saved_split(join(path, name), name)]
        return named, True, {}
    saved, moved = _exists(join(path, "state.json")), {}
    if saved:
        files = _saved_split(path, None)
        found = [(name, uri) for name, uri in files if split in (None, name)]
    else:
        files = _hub_splits(path, [entry.uri for entry in entries])
        if not files:
            raise StorageError(f"{path}: no dataset here (no dataset_dict.json, state.json, parquet or arrow files)")
        found, moved = _named_hub_files(split, files)
    if files and not found:  # a misspelt split would read nothing, and publish an empty version
        raise StorageError(f"{path}: no split {split!r}; the dataset has {sorted({name for name, _ in files})}")
    return found, saved, moved


def _hub_splits(path: str, uris: list[str]) -> list[tuple[str, str]]:
    """(split, URI) of each of ``uris``, the data files of the Hub-style folder at ``path``: the split in the
    file's name as the Hub, ``push_to_hub`` (a fingerprint after the shard numbers) and the datasets cache
    (``<builder>-<split>-...arrow``, ``<builder>-train.arrow``) write it, or a file ``train``/``test``/
    ``validation`` at the top of the folder; else its folder's name, as earlier releases named every other file
    (``datasets``' looser rules would take ``train_clean/`` into ``train``; ``_named_hub_files`` reads a split
    as earlier releases named it too)."""
    named, top = [], path_of(path).rstrip("/")
    for uri in uris:
        name, folder = posixpath.basename(uri), posixpath.dirname(uri)
        match = _SPLIT_IN_NAME.match(name) or (_SPLIT_IN_CACHE_NAME.match(name) if name.endswith(".arrow") else None)
        stem, suffix = posixpath.splitext(name)
        if match:
            split = match.group("split") or match.group("one")
        elif stem in _TOP_SPLITS and suffix in (".parquet", ".arrow") and path_of(folder) == top:
            split = stem
        else:
            split = posixpath.basename(folder)
        named.append((split, uri))
    return named


def _named_hub_files(
    split: str | None, files: list[tuple[str, str]]
) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """Those of a Hub-style folder's ``files`` (split, URI) that a recipe's ``split`` reads: the files the split
    names, and those earlier releases named it by their folder (``data/``) that their names now give another
    split (``data/train-00000-of-00001-<fingerprint>.parquet``): the recipe read them, and would read fewer
    files without a word. Those, by the split their names give, come second (``_warn_moved``)."""
    found: list[tuple[str, str]] = []
    moved: dict[str, list[str]] = {}
    if split is None:
        return files, moved
    for name, uri in files:
        earlier = _earlier_split(uri)
        if split in (name, earlier):
            found.append((split, uri))
        if earlier == split != name:
            moved.setdefault(name, []).append(uri)
    return found, moved


def _warn_moved(path: str, split: str | None, moved: dict[str, list[str]], fresh: Collection[str]) -> None:
    """Warn of the files ``split`` reads by the name earlier releases gave them (``_named_hub_files``) where
    the run reads any of them new (``fresh``): said on every run, a scheduled one that read nothing new
    too, it was noise the recipe could not silence but by reading other files."""
    moved = {name: [uri for uri in uris if uri in fresh] for name, uris in moved.items()}
    moved = {name: uris for name, uris in moved.items() if uris}
    if moved:
        log.warning(
            "%s: split %r reads, as earlier releases did by their folder's name, files whose names now give them "
            "other splits: %s; use `split: %s` to read them by their names (said only in a run that reads such a "
            "file new)",
            path,
            split,
            "; ".join(f"{name!r} ({_some(uris)})" for name, uris in sorted(moved.items())),
            "` or `split: ".join(sorted(moved)),
        )


def _some(uris: list[str]) -> str:
    return uris[0] if len(uris) == 1 else f"{len(uris)} files: {uris[0]}, ..."


def _earlier_split(uri: str) -> str:
    """A data file's split as releases before the Hub's other forms were read named it."""
    match = _EARLIER_SPLIT_IN_NAME.match(posixpath.basename(uri))
    return match.group("split") if match else posixpath.basename(posixpath.dirname(uri))


def _saved_split(folder: str, name: str | None) -> list[tuple[str, str]]:
    # What state.json names is what the split holds: a data file an earlier run took that it no longer names
    # goes (``HFSourceReader.files``). So a split without one, or one naming no files, is an error, as it is
    # to ``load_from_disk``, not a split that now holds nothing.
    state = _read_json(join(folder, "state.json"))
    if state is None:
        named_by = f", though dataset_dict.json names split {name!r}" if name else ""
        raise StorageError(f"{join(folder, 'state.json')}: missing{named_by}")
    if not isinstance(state, dict) or not isinstance(state.get("_data_files"), list):
        raise StorageError(f"{join(folder, 'state.json')}: names no data files (no _data_files list)")
    split = state.get("_split") or name or "train"
    return [(split, join(folder, item["filename"])) for item in state["_data_files"]]


def _read_once(
    chosen: list[tuple[str, str]], entries: dict[str, FileEntry], repeated: dict[str, str]
) -> list[tuple[str, str]]:
    """``chosen`` (split, URI) but for the paths the listing left out as second paths to a file it lists
    (``repeated``: path -> the path it is listed at): that file is read once, under the other path. Where
    that path is not chosen (another split's name for the same bytes), the file is read under the first
    chosen one (added to ``entries``, and in ``repeated`` the path the others are read at): once still."""
    uris = {uri for _, uri in chosen}
    # Each path -> the second paths listed at it, for the remapping below: scanning ``repeated`` for each
    # file made a Hub cache of 8,000 shards take seconds (quadratic).
    listed_there: dict[str, list[str]] = {}
    for path, at in repeated.items():
        listed_there.setdefault(at, []).append(path)
    kept: list[tuple[str, str]] = []
    for name, uri in chosen:
        at = None if uri in entries else _listed_at(uri, repeated)
        if at is None:
            kept.append((name, uri))
        elif at not in uris and at in entries:  # the first of its chosen names stands in for the file
            entries[uri] = dataclasses.replace(entries[at], uri=uri)
            repeated.pop(uri, None)
            others = [other for other in listed_there.pop(at, []) if other != uri]
            for other in others:
                repeated[other] = uri
            listed_there[uri] = others
            uris.add(at)
            kept.append((name, uri))
    return kept


def _under_folders(repeated: dict[str, str], listed: Collection[str]) -> list[str]:
    """Each ``listed`` file under a folder that ``repeated`` left out as a second path to a folder (``validation
    -> test``), named through it (``validation/0000.parquet``). Each file is looked up by its folders (the
    depth of its path), not against every second name: a Hub cache holds thousands, most of them files."""
    folders: dict[str, list[str]] = {}
    for path, at in repeated.items():
        if at not in listed:  # a file's second name is no folder
            folders.setdefault(at, []).append(path)
    found: list[str] = []
    if not folders:
        return found
    for uri in listed:
        folder = posixpath.dirname(uri)
        while folder != posixpath.dirname(folder):
            found += [path + uri.removeprefix(folder) for path in folders.get(folder, ())]
            folder = posixpath.dirname(folder)
    return found


def _listed_at(uri: str, repeated: dict[str, str]) -> str | None:
    """The path the listing lists ``uri``'s file at, where ``uri`` is, or lies under, a path it left out as a
    second path to it (``repeated``); else None."""
    path = uri
    while (at := repeated.get(path)) is None:
        parent = posixpath.dirname(path)
        if parent == path:
            return None
        path = parent
    return at + uri.removeprefix(path)


def _no_longer_named(watermark: SourceWatermark, named: set[str]) -> None:
    """The data files an earlier run took that the dataset's state.json no longer names leave the dataset:
    their records are replaced by nothing, as those of an input read whole again that holds nothing now.
    ``save_to_disk`` into the same folder with another number of shards leaves the old files there, unnamed;
    kept as a deleted input's records are, the old rows stayed beside the new ones. Their watermarks go too,
    so a file saved under such a name again is new."""
    for uri in sorted(set(watermark.committed) - named):
        watermark.replaced.add(uri)
        watermark.forget(uri)


class HFSourceReader:
    name = CONNECTOR

    def __init__(
        self,
        config: HFSource,
        batch_rows: int,
        watermark: SourceWatermark | None = None,
        used_columns: Collection[str] | None = None,
        image_column: str | None = None,
        text_columns: Collection[str] | None = None,
        text_paths: Mapping[str, Collection[tuple[str | int, ...]]] | None = None,
        bytes_for: Collection[str] = (),
    ) -> None:
        self.config, self.batch_rows, self.watermark = config, batch_rows, watermark
        self.used_columns = used_columns  # as the files connector's (``split_nested_not_utf8``)
        # The column a VQA record takes its image from: an Image() feature there is the record's picture.
        self.image_column = image_column
        # The columns read as text, where an Image() feature is refused (None: those used but the image column).
        self.text_columns = text_columns
        # What of each column is read as text (``shot.cap``: ("cap",)), where not whole: a dict feature holding
        # an Image() is refused where that reaches the image.
        self.text_paths = text_paths or {}
        # The stages reading a VQA record's picture (``image_dedup``, ``pii ocr``): they need an Image() feature.
        self.bytes_for = list(bytes_for)
        if image_column is not None:  # decoded images are held per batch, as the images connector bounds them
            self.batch_rows = min(batch_rows, IMAGES_PER_BATCH)
        self._files: list[tuple[str, FileEntry]] | None = None

    def files(self) -> list[tuple[str, FileEntry]]:
        if self._files is None:
            # Listed once (S3 calls cost), each file once: in the Hub's cache, ``snapshots/<rev>/...`` are links
            # to ``blobs/<hash>``, two names often to one blob, whose rows were published twice. Not
            # ``links_out``: a source at ``snapshots/<rev>`` reads through links out of it, to the blobs.
            again: dict[str, str] = {}
            files = list_files(self.config.path, suffixes=(".parquet", ".arrow"), links_repeated=again)
            if self.watermark is not None:
                self.watermark.links_repeated = again
            # The paths left out are given to ``data_files`` too: a split is chosen by a path's name. A folder
            # left out (``validation -> test``) names each file under it: its split is the folder's name.
            entries = {e.uri: e for e in files}
            seconds = [FileEntry(path, 0, None) for path in again if path.endswith((".parquet", ".arrow"))]
            seconds += [FileEntry(path, 0, None) for path in _under_folders(again, entries)]
            chosen, saved, moved = data_files(self.config.path, self.config.split, [*files, *seconds])
            listed = _read_once(chosen, entries, again)
            missing = [uri for _, uri in listed if uri not in entries]
            if missing:
                raise StorageError(f"{missing[0]}: named by the dataset's state.json but missing")
            if saved and self.watermark is not None:  # before ``new_files``: no new file has their bytes
                _no_longer_named(self.watermark, {uri for _, uri in listed})
            fresh = {
                e.uri for e in new_files([entries[uri] for _, uri in listed], self.watermark, hashed_when_read=True)
            }
            _warn_moved(self.config.path, self.config.split, moved, fresh)
            self._files = [(split, entries[uri]) for split, uri in listed if uri in fresh]
        return self._files

    def entries(self) -> list[FileEntry]:
        """The data files to read, for ``curation check``."""
        return [entry for _, entry in self.files()]

    def head(self, entry: FileEntry) -> SourceBatch:
        """For ``curation check``: the file's first batch as a run reads it (a file or column the run refuses
        raises the same StorageError). The file is closed once it is made: only the row groups or record batches
        it takes are read, not the rest of a split's file; of a Parquet file, only the columns the recipe reads (a
        file whose first row group holds more of them than ``HEAD_ROW_GROUP_BYTES`` raises HeadNotRead)."""
        with contextlib.closing(self._read(entry, head=True)) as batches:
            return next(batches, SourceBatch(rows=pa.table({})))

    def list_again(self) -> None:
        """Forget the listing: the next ``files`` lists again (inputs added to ``read_again`` since)."""
        self._files = None

    def inputs(self) -> list[InputFile]:
        return [InputFile(uri=e.uri, size=e.size, mtime=e.mtime) for _, e in self.files()]

    def batches(self) -> Iterator[SourceBatch]:
        for _split, entry in self.files():
            digest = read_digest(self.watermark, entry)
            for batch in self._read(entry, digest):
                yield less_kept(self.watermark, batch)
            taken(self.watermark, entry, digest)

    def batches_of(self, uris: set[str]) -> Iterator[SourceBatch]:
        """The batches of its data files in ``uris`` (read whole again), read before the run (``keep_archived``)."""
        for _split, entry in self.files():
            if entry.uri in uris:
                yield from self._read(entry)

    def _read(self, entry: FileEntry, digest: ReadDigest | None = None, head: bool = False) -> Iterator[SourceBatch]:
        try:
            yield from self._file(entry, digest, head)
        except StorageError:
            raise  # names the file already
        except (pa.ArrowInvalid, OSError) as error:
            raise StorageError(f"{entry.uri}: cannot read: {error}") from None

    def _file(self, entry: FileEntry, digest: ReadDigest | None = None, head: bool = False) -> Iterator[SourceBatch]:
        ids, checked = InputIds(entry.uri), None
        for table, row, input_bytes in self._tables(entry, digest, head):
            # Text that is not UTF-8 (Parquet and Arrow readers do not check) is dealt with as the files
            # connector's Parquet: a row holding it in a struct, list or map set aside, and a text column
            # holding it made binary, whose values that are not UTF-8 quarantine their rows (``Shape``). Left
            # as text, it failed the run with a traceback from inside pyarrow.
            table = plain_strings(table)
            # The checks of the columns read look at the schema alone, which a file's batches share: made at its
            # first batch, not at every one (a VQA recipe reads 256 rows a batch).
            checked = checked or self._checked(ids.uri, table.schema)
            yield self._batch(ids, table, row, input_bytes, *checked)

    def _tables(self, entry: FileEntry, digest: ReadDigest | None, head: bool) -> Iterator[tuple[pa.Table, int, int]]:
        """The data file's batches of ``batch_rows`` rows, each with its first row's number and its share of the
        file's bytes."""
        fs, path = filesystem(entry.uri)
        row = 1
        if entry.uri.endswith(".parquet"):
            with open_input(fs, path, entry.etag, digest) as handle:
                parquet = pq.ParquetFile(handle)
                total = max(parquet.metadata.num_rows, 1)
                columns = self._head_columns(entry.uri, parquet) if head else None
                for batch in parquet.iter_batches(batch_size=self.batch_rows, columns=columns):
                    yield pa.Table.from_batches([batch]), row, (entry.size or 0) * batch.num_rows // total
                    row += batch.num_rows
            return
        with open_input(fs, path, entry.etag, digest) as stream:  # save_to_disk writes Arrow IPC streams
            reader = pa.ipc.open_stream(stream)
            pending: list[pa.RecordBatch] = []
            for batch in reader:
                pending.append(batch)
                while sum(b.num_rows for b in pending) >= self.batch_rows:
                    table = pa.Table.from_batches(pending)
                    first, rest = table.slice(0, self.batch_rows), table.slice(self.batch_rows)
                    yield first, row, 0
                    row += first.num_rows
                    pending = rest.to_batches()
            if pending:
                yield pa.Table.from_batches(pending, schema=reader.schema), row, entry.size or 0

    def _checked(self, uri: str, schema: pa.Schema) -> tuple[Collection[str], bool]:
        """The names the recipe reads a data file's columns under (a file's ``id`` its ``input_id``, as ``reads``
        compares them), and whether its image column is an Image() feature, the record's picture; a column read
        so that the file cannot give it refused (``_no_image_feature``, ``_no_image_bytes``)."""
        read = [input_name(name) for name in schema.names] if self.used_columns is None else self.used_columns
        text = set(read) - {self.image_column} if self.text_columns is None else self.text_columns
        _no_image_feature(schema, uri, text, self.text_paths)
        column = self.image_column
        picture = column in schema.names and _is_image_feature(schema.field(column).type)
        _no_image_bytes(schema, uri, column, self.bytes_for, picture)
        return read, picture

    def _head_columns(self, uri: str, parquet: pq.ParquetFile) -> list[str] | None:
        """The columns of ``parquet`` a head reads: those the recipe reads (None: all, where it did not say). The
        first row group is decoded whole for the first batch: HeadNotRead where those columns of it are more
        than ``HEAD_ROW_GROUP_BYTES``."""
        names = parquet.schema_arrow.names
        columns = names if self.used_columns is None else [name for name in names if self._head_reads(name)]
        if not parquet.metadata.num_row_groups:
            return columns
        group = parquet.metadata.row_group(0)
        # A column chunk's path is its column's name, then its fields' (``meta.note``, ``masks.list.element``).
        paths = [group.column(index).path_in_schema for index in range(group.num_columns)]
        size = sum(
            group.column(index).total_uncompressed_size
            for index, path in enumerate(paths)
            if any(path == name or path.startswith(f"{name}.") for name in columns)
        )
        if size > HEAD_ROW_GROUP_BYTES:
            raise HeadNotRead(
                f"{uri}: head not read: its first row group holds {size / 2**20:,.0f} MiB of the columns the recipe "
                f"reads, decoded whole for a first batch (more than {HEAD_ROW_GROUP_BYTES // 2**20:,} MiB): the run "
                "reads it"
            )
        return columns if self.used_columns is not None else None

    def _head_reads(self, name: str) -> bool:
        """Whether a head reads ``name``: the recipe reads a file's ``id`` as ``input_id``, and ``id``,
        ``input_id`` (``source`` alike) are always read, so that the clash the run refuses is seen by the head."""
        return reads(name, self.used_columns) or name in (*RESERVED, *map(input_name, RESERVED))

    def _batch(
        self, ids: InputIds, table: pa.Table, first_row: int, input_bytes: int, read: Collection[str], picture: bool
    ) -> SourceBatch:
        column = self.image_column
        lines = np.arange(first_row, first_row + table.num_rows)
        # An Image() feature's path is not published: a byte there that is not UTF-8 must not lose its picture.
        checked = [name for name in read if not (picture and name == column)]
        table, lines, set_aside = split_nested_not_utf8(table, ids, lines, checked, CONNECTOR)
        # The ids from the text as read: a column made binary writes its values' bytes otherwise.
        contents = row_contents(as_read(table))
        rows = with_lineage(table, ids(contents), source_array(CONNECTOR, ids.uri, lines.tolist()))
        if picture:
            rows, bad = _with_images(rows, column, [f"{ids.uri}:{line}" for line in lines.tolist()])
            set_aside = pa.concat_tables([set_aside, bad])
        return SourceBatch(rows=not_utf8_as_binary(rows), set_aside=set_aside, input_bytes=input_bytes)


def _with_images(rows: pa.Table, column: str, names: list[str]) -> tuple[pa.Table, pa.Table]:
    """The rows whose Image() feature in ``column`` holds a picture that passes an `images` source's checks,
    with its cleaned bytes in ``image_bytes`` (as the images connector hands them on) and ``column`` the
    image's name (``names``, a row's own: ``uri:line``, its data file and row, so no two rows' pictures share a
    name: the split keeps a name's images on one side, and datasets often name every picture alike, or not at
    all); the others set aside."""
    results = [_image_of(row[column]) for row in rows_as_read(rows.select([column]))]
    good = [row for row, result in enumerate(results) if isinstance(result, CleanImage)]
    kept = rows.take(pa.array(good, pa.int64()))
    kept = kept.set_column(
        kept.column_names.index(column), column, pa.array([names[row] for row in good], pa.string())
    ).append_column("image_bytes", pa.array([results[row].data for row in good], pa.binary()))
    bad = [(row, result) for row, result in enumerate(results) if isinstance(result, ImageProblem)]
    if not bad:
        return kept, empty_set_aside()
    at = pa.array([row for row, _ in bad], pa.int64())
    problems = rows.take(at)
    set_aside = set_aside_rows(
        problems["id"],
        problems["source"],
        stage="read",
        outcome="quarantined",
        reasons=[problem.reason for _, problem in bad],
        details=[f"{names[row]}: column {column!r}: {problem.detail}" for row, problem in bad],
        # The row's image as its size (``record_json``), not its bytes spelt out as text.
        records=[input_record_json(row) for row in rows_as_read(problems)],
    )
    return kept, set_aside


def _image_of(value: dict | None) -> CleanImage | ImageProblem:
    """An Image() feature's picture as an `images` source keeps it, or why not. A value holding a path without
    bytes is refused, not read: the path is of the machine the dataset was built on (``datasets`` keeps the
    local file's path where it did not embed the image), and a file a row names was never the recipe's to
    publish (an `images` source refuses a name outside its folder for that reason)."""
    if value is None or (value["bytes"] is None and not value["path"]):
        return ImageProblem("missing_image", "the row holds no image")
    if value["bytes"] is None:
        return ImageProblem(
            "missing_image",
            f"holds the path {value['path']!r} only, not the image's bytes (save the dataset with its images "
            "embedded, as save_to_disk and push_to_hub write them and to_parquet does not, or read the images "
            "with an `images` source)",
        )
    checks = _IMAGE_CHECKS
    try:
        return clean_image(value["bytes"], list(checks.formats), checks.max_pixels, checks.max_side)
    except ImageProblem as problem:
        return problem


def _no_image_bytes(schema: pa.Schema, uri: str, column: str | None, bytes_for: list[str], picture: bool) -> None:
    """Refuse, by file and column, stages reading VQA pictures (``bytes_for``) where the records' image is not an
    Image() feature (``picture``: it is): an image named by a path is read by the writer alone, as it is, so
    ``image_dedup`` compared nothing and ``ocr`` would publish it unredacted. The recipe check refuses them so for
    the other sources, but cannot see an hf column's type."""
    if not bytes_for or picture or (column is not None and column not in schema.names):
        return  # a file without the column: its records are set aside for lacking it
    if column is None:
        held = "the records' image is a template (text: a path)"
    else:
        kind = schema.field(column).type
        held = f"column {column!r} holds {'text (paths)' if pa.types.is_string(kind) else kind}"
    raise StorageError(
        f"{uri}: {' and '.join(bytes_for)} need{'s' if len(bytes_for) == 1 else ''} the images' bytes; {held}, not a "
        "Hugging Face Image feature: an image named by its path is published as it is, unread (read the images "
        "with an `images` source, or save the dataset with an Image() feature)"
    )


def _no_image_feature(
    schema: pa.Schema, uri: str, used: Collection[str], paths: Mapping[str, Collection[tuple[str | int, ...]]]
) -> None:
    """Refuse, by file and column, a column the recipe reads as text that is a Hugging Face ``Image()`` feature
    (``struct<bytes, path>``, the usual VQA image on the Hub), or a dict feature holding one rendered so that it
    reaches the image (``paths``: what of each column is certainly rendered, ``shot.cap``; none if not named): handed
    on as text, its bytes quarantined every row as ``schema`` ("not UTF-8 text"), with nothing to say the
    dataset's images were the cause. A VQA record's ``image`` column is read as its picture (``_with_images``)."""
    features = _declared_features(schema)
    for field in schema:
        name = field.name
        if not reads(name, used):
            continue
        if features is not None:
            feature = features.get(name)
            if not _holds_image(feature):
                _no_image_in_dict(uri, name, feature, paths.get(input_name(name), ()))
                continue
            is_one = isinstance(feature, dict) and feature.get("_type") == "Image"
            what = "is a Hugging Face Image feature" if is_one else "holds Hugging Face Image features"
        elif _is_image_feature(field.type, exact=True):
            what = "is a Hugging Face Image feature"
        else:
            continue
        raise StorageError(
            # A list of pictures named as the VQA image quarantines every row "not UTF-8": say what it must be.
            f"{uri}: column {name!r} {what}, read here as text: a `vqa` record's image (`image: <column>`) must be "
            "a column that is itself one Image() feature, which no template or other field reads"
        )


def _declared_features(schema: pa.Schema) -> dict | None:
    """The features ``datasets`` declared, by column (its ``huggingface`` schema metadata, which ``save_to_disk``,
    ``push_to_hub`` and ``to_parquet`` write), None where it declared none: then a struct of exactly ``bytes`` and
    ``path`` is taken for an Image() feature; where it did, a dict feature of the same shape is the dataset's own
    bytes and text, a template's to read."""
    try:
        features = json.loads((schema.metadata or {})[b"huggingface"])["info"]["features"]
    except (KeyError, TypeError, ValueError):
        return None
    return features if isinstance(features, dict) else None


def _no_image_in_dict(uri: str, name: str, feature: object, paths: Collection[tuple[str | int, ...]]) -> None:
    """Refuse a rendering of a dict feature (``paths``) that reaches an Image() feature in it: ``{{ shot }}`` or
    ``{{ shot.img }}`` rendered the picture's bytes as text. Its other fields (``{{ shot.cap }}``) are text; a
    template testing or passing on the dict (``{% if shot %}``) is left to fail as it does, if it does."""
    for path in paths:
        image = _image_in(*_feature_at(feature, name, path))
        if image is None:
            continue
        others = (
            [key for key, field in feature.items() if _image_in(field, key) is None]
            if isinstance(feature, dict)
            else []
        )
        other = f" (`{{{{ {name}.{others[0]} }}}}`)" if others else ""
        raise StorageError(
            f"{uri}: column {name!r} holds a Hugging Face Image feature ({image}), read here as text: a template "
            f"may read the dict's other fields{other}, not the image in it"
        )


def _feature_at(feature: object, name: str, path: tuple[str | int, ...]) -> tuple[object, str]:
    """The feature a template reaches reading ``path`` of column ``name``'s ``feature`` (None: none, the template
    fails on its own), or the one it stops at: an Image() read at its fields (``img.bytes``) is read as text still,
    but at its ``path``, the picture's file name, is text; and where that is (``shot.img``). A list's item is
    reached by a number, and by a field's name too: ``datasets`` stores a ``Sequence`` of a dict as a dict of
    lists. A key is a field's name even where it is a dict's method
    (``shot['items']``): ``_paths_read`` has stopped a path at an attribute that is one (``shot.items``)."""
    where = name
    for key in path:
        while isinstance(feature, list) or (isinstance(feature, dict) and "_type" in feature and "feature" in feature):
            feature = feature[0] if isinstance(feature, list) else feature["feature"]
            if isinstance(key, int):
                where += f"[{key}]"
                break
        else:
            if isinstance(feature, dict) and feature.get("_type") == "Image" and key == "path":
                feature, where = {"dtype": "string", "_type": "Value"}, f"{where}.{key}"
                continue
            if not isinstance(feature, dict) or "_type" in feature:
                return feature, where
            feature, where = (feature.get(key) if isinstance(key, str) else None), f"{where}.{key}"
    return feature, where


def _image_in(feature: object, where: str) -> str | None:
    """Where ``feature`` holds an Image() feature (``where``, or a field under it: ``shot.img``), None if nowhere."""
    if isinstance(feature, list):
        return next(filter(None, (_image_in(item, where) for item in feature)), None)
    if not isinstance(feature, dict):
        return None
    if "_type" not in feature:  # a dict feature
        return next(filter(None, (_image_in(field, f"{where}.{key}") for key, field in feature.items())), None)
    return where if feature["_type"] == "Image" else _image_in(feature.get("feature"), where)


def _holds_image(feature: object) -> bool:
    """Whether a feature as ``datasets`` declares it is an ``Image()`` or a list of them (a ``Sequence``'s or
    ``List``'s ``feature``, or ``[Image()]``): read as text, those bytes failed the template ("not UTF-8 text"),
    nothing naming the images. A dict holding one is not: the recipe only names its column, and a template
    reading the dict's other fields (``{{ shot.cap }}``) publishes them."""
    if isinstance(feature, list):
        return any(_holds_image(item) for item in feature)
    if not isinstance(feature, dict) or "_type" not in feature:
        return False
    return feature["_type"] == "Image" or _holds_image(feature.get("feature"))


def _is_image_feature(kind: pa.DataType, exact: bool = False) -> bool:
    """An Image() feature (``struct<bytes, path>``), or, unless ``exact``, a struct holding one's fields beside
    others (a caption), as a VQA record's image is read: its picture is its bytes, the other fields are not read.
    Only ``exact`` is taken for one read as text: a metadata struct holding a caption beside them is text."""
    names = {field.name for field in kind} if pa.types.is_struct(kind) else set()
    if not {"bytes", "path"} <= names or (exact and names != {"bytes", "path"}):
        return False
    data, path = kind.field("bytes").type, kind.field("path").type
    return (pa.types.is_binary(data) or pa.types.is_large_binary(data)) and (
        pa.types.is_string(path) or pa.types.is_large_string(path)
    )
