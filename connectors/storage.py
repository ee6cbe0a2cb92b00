"""Every path is a URI: a local path, ``file://`` or ``s3://bucket/key``.

S3 settings come from the standard AWS ones (``AWS_ENDPOINT_URL``, profile, region), so the
same recipe runs against AWS, MinIO or a local test server unchanged. pyarrow's S3 client does
not read the endpoint (from the environment or the profile) itself, so we pass on what boto3 takes.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import functools
import heapq
import io
import logging
import os
import posixpath
import re
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from glob import iglob
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import xxhash

log = logging.getLogger(__name__)


class StorageError(OSError):
    """A path that cannot be read or written; the message names it."""


class Unreadable(StorageError):
    """A listed input that could not be opened or read for a fault of its access, not of its content
    (denied, an I/O error, a share or bucket away): a later run may read it. Made by ``Unreadable.of``."""

    uri: str
    why: str  # the OS's reason ("Permission denied"), or the storage's message

    @classmethod
    def of(cls, uri: str, error: OSError) -> Unreadable:
        why = os_reason(error)
        found = cls(f"{uri}: cannot read: {why}")
        found.uri, found.why = uri, why  # attributes, not arguments: pickled whole to and from Ray workers
        return found


def os_reason(error: Exception) -> str:
    """The OS's reason for ``error`` ("Permission denied") where it has an errno, else its message."""
    errno = getattr(error, "errno", None)
    return os.strerror(errno) if errno else str(error)


class NotThere(StorageError):
    """A path that names nothing: told apart from one that could not be listed (denied, a share away),
    which a source must never take for an emptied folder."""


class Changed(StorageError):
    """A listed S3 object overwritten since the listing (``changed``)."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


_AWS_SETTINGS = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE",
)


def s3_filesystem() -> pafs.S3FileSystem:
    return _s3_filesystem(*_s3_settings(tuple(os.environ.get(name) for name in _AWS_SETTINGS)))


def s3_endpoint() -> str | None:
    """The S3 endpoint the environment or the profile sets; None: AWS's own."""
    return _s3_settings(tuple(os.environ.get(name) for name in _AWS_SETTINGS))[0]


@functools.lru_cache(maxsize=8)
def _s3_settings(_environment: tuple[str | None, ...]) -> tuple[str | None, str | None]:
    """The endpoint and region boto3 takes for S3 (which lists what pyarrow reads and writes): the
    environment's, else the profile's (``endpoint_url`` and ``region`` in the AWS config file, or its
    ``services`` section), none where ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`` says so. Keyed by the
    settings that decide them, so the config file is read once per environment."""
    import botocore.session
    from botocore.configprovider import ConfiguredEndpointProvider
    from botocore.exceptions import BotoCoreError

    try:
        session = botocore.session.Session()
        endpoint = None
        if not session.get_config_variable("ignore_configured_endpoint_urls"):
            endpoint = ConfiguredEndpointProvider(session.full_config, session.get_scoped_config(), "s3").provide()
        region = os.environ.get("AWS_REGION") or session.get_config_variable("region")
    except BotoCoreError as exc:  # a profile AWS_PROFILE names that the config file lacks, a config that does not parse
        raise StorageError(f"the AWS settings cannot be read: {exc}") from None
    return endpoint, region


def _s3_client() -> Any:
    """boto3's S3 client; AWS settings it cannot read (a profile the config file lacks) are one line."""
    import boto3
    from botocore.exceptions import BotoCoreError

    try:
        return boto3.client("s3")
    except BotoCoreError as exc:
        raise StorageError(f"the AWS settings cannot be read: {exc}") from None


@functools.lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    options: dict[str, object] = {}
    if endpoint:
        options["endpoint_override"] = endpoint
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem that holds ``uri`` and the path within it."""
    if is_s3(uri):
        return s3_filesystem(), path_of(uri)
    return pafs.LocalFileSystem(), path_of(uri)


def path_of(uri: str) -> str:
    """The path of ``uri`` within its filesystem (``filesystem``'s), found without making the filesystem."""
    return uri.removeprefix("s3://") if is_s3(uri) else os.path.abspath(uri.removeprefix("file://"))


# The first bytes of a gzip member and a zstd frame: no text file starts with either (neither is UTF-8).
_PACKED = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}
# A bzip2 stream: "BZh", its block size, then a block's magic number or the end's (an empty stream).
_BZIP2 = re.compile(rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)")
# The suffixes of the compressions ``open_input`` unpacks. Hadoop's .deflate (Hive's default codec) is a zlib
# stream, told by its name: its first two bytes can be text (0x78 0x01 is "x" and Hive's field delimiter).
PACKED_SUFFIXES = (".gz", ".zst", ".bz2", ".deflate")
# Hadoop codecs whose block framing no reader here unpacks: such files are named, not read as text.
UNREAD_CODECS = (".snappy", ".lz4", ".lzo", ".lzo_deflate")


class ReadDigest:
    """The xxh3 of a file's bytes as stored (a ``.gz`` file's packed bytes), taken from the reads of the
    stream ``open_input`` opened with it: ``value`` is set when that stream is closed after a reading that
    raised nothing, and covers the bytes from the file's start to the furthest one read."""

    value: str | None = None


class _HashedReads:
    """A file handle whose bytes feed an xxh3 as they are read, from the file's start on. A reader that
    reads in order (a stream) is hashed as it reads; a few bytes it skips (a Parquet file's leading
    magic number) are read for the hash, and those it read out of order (a Parquet footer, read first)
    again at the end (``hexdigest``)."""

    def __init__(self, handle: pa.NativeFile) -> None:
        self.handle = handle
        self.hasher = xxhash.xxh3_128()
        self.hashed = 0  # the file's bytes before this offset are in the hash
        self.end = 0  # the furthest byte read

    def read(self, size: int | None = -1) -> bytes:
        at = self.handle.tell()
        data = self.handle.read(None if size is None or size < 0 else size)
        if self.hashed < at <= self.hashed + _GAP_READ_AGAIN:
            self._hash_up_to(at)
        if at <= self.hashed < at + len(data):
            self.hasher.update(memoryview(data)[self.hashed - at :])
            self.hashed = at + len(data)
        self.end = max(self.end, at + len(data))
        return data

    def _hash_up_to(self, end: int) -> None:
        while self.hashed < end:
            block = self.handle.read_at(min(end - self.hashed, _HASH_BLOCK_BYTES), self.hashed)
            if not block:  # the file shrank since it was read
                break
            self.hasher.update(block)
            self.hashed += len(block)

    def hexdigest(self) -> str:
        self._hash_up_to(self.end)
        return self.hasher.hexdigest()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()

    @property
    def closed(self) -> bool:
        return self.handle.closed

    def close(self) -> None:
        pass  # the handle is open_input's to close


_HASH_BLOCK_BYTES = 8 * 1024 * 1024
_GAP_READ_AGAIN = 64 * 1024  # bytes a reader skipped that are read for the hash at once, rather than at the end


@contextlib.contextmanager
def open_input(
    fs: pafs.FileSystem, path: str, etag: str | None = None, digest: ReadDigest | None = None
) -> Iterator[Any]:
    """The file as a stream of its bytes, unpacked where it is compressed, as told by its first bytes,
    not its name: an object uploaded compressed with ``Content-Encoding: gzip`` under a plain name
    (``x.jsonl``), which no S3 client unpacks, reads as its text; so does a ``.gz`` file named without
    the suffix. An S3 object given the ``etag`` its listing gave is read as listed (``_ListedObject``).
    With ``digest``, the bytes read are hashed as they are read (``ReadDigest``): a file new to a source
    is read once, not hashed first for its watermark and read again."""
    uri = f"s3://{path}" if isinstance(fs, pafs.S3FileSystem) else path
    try:
        handle = open_file(fs, path, etag)
    except OSError as error:
        raise _not_opened(uri, error) from None
    with handle:
        try:
            head = handle.read_at(10, 0) if handle.size() else b""
        except OSError as error:
            raise _not_opened(uri, error) from None
        packed = _packing(head, path)
        handle.seek(0)
        hashed = _HashedReads(handle) if digest is not None else None
        # Handed on as a Python file, which Arrow's readers take as such: a PythonFile round it would
        # copy each block once more.
        source = hashed if hashed is not None else handle
        yield pa.CompressedInputStream(source, packed) if packed else source
        if digest is not None and hashed is not None:
            digest.value = hashed.hexdigest()


def _packing(head: bytes, path: str) -> str | None:
    """Arrow's codec for a file whose first bytes are ``head``, or None where it is not compressed. Arrow's
    gzip one reads a zlib stream too (``.deflate``: a header whose check bits hold, deflate's method)."""
    if (
        path.lower().endswith(".deflate")
        and len(head) >= 2
        and head[0] & 0x0F == 8
        and int.from_bytes(head[:2]) % 31 == 0
    ):
        return "gzip"
    return _PACKED.get(head[:2]) or _PACKED.get(head[:4]) or ("bz2" if _BZIP2.match(head) else None)


def open_file(fs: pafs.FileSystem, path: str, etag: str | None = None) -> Any:
    """The file for random access, its bytes as stored; an S3 object given the ``etag`` its listing
    gave, as listed (``open_listed``)."""
    if etag is None or not isinstance(fs, pafs.S3FileSystem):
        return fs.open_input_file(path)
    return open_listed(f"s3://{path}", etag)


def open_listed(uri: str, etag: str) -> pa.NativeFile:
    """The S3 object at ``uri`` for random access, as listed with ``etag`` (``_ListedObject``)."""
    return pa.PythonFile(_ListedObject(uri, etag), mode="r")


def _not_opened(uri: str, error: OSError) -> OSError:
    """What opening an input (or reading its first bytes) raised, as the readers tell it: a file not
    there as it was (``gone``); any other error, before a byte of it was read, is its access's
    (``Unreadable``), whatever the storage's message (S3's refusals carry no errno)."""
    if isinstance(error, StorageError):  # names the input already (changed since listed, or unreadable)
        return error
    return error if _missing(error) else Unreadable.of(uri, error)


def _missing(error: OSError) -> bool:
    return isinstance(error, FileNotFoundError) or "not found" in str(error).lower()


def read_error(uri: str, error: OSError) -> StorageError:
    """An error met reading a listed input, naming it: ``gone`` where it is not there any more;
    ``Unreadable`` where the OS says why (an errno: denied, an I/O error); else the input's content is
    damaged (Arrow's and zlib's errors on damaged data carry no errno)."""
    if isinstance(error, StorageError):
        return error  # names the input already
    if _missing(error):
        return StorageError(gone(uri))
    if error.errno:
        return Unreadable.of(uri, error)
    return StorageError(f"{uri}: cannot read: {error}")


def gone(uri: str) -> str:
    """Why a listed input could not be opened: moved or deleted while the run read its source. The run
    fails rather than pass over it: the fingerprint its listing gave would be saved as read, and the
    same object put back would never be read."""
    return f"{uri}: gone since the run listed it (moved or deleted while the run read); run again to read what is there now"


def changed(uri: str) -> str:
    """Why a listed input was not read: overwritten while the run read its source. Read, the new bytes
    would be saved as read under the listed ETag: the next run would read them again (published twice)
    and the listed ones never."""
    return f"{uri}: changed since the run listed it (overwritten meanwhile); run again to read what is there now"


# Buckets whose store answered 501 to a conditional read: read without the condition (said once).
_UNCONDITIONAL: set[tuple[str, str]] = set()  # (endpoint, bucket)

READ_AHEAD_BYTES = 1024 * 1024  # asked of S3 at least at once: a gzip stream reads 64 KiB at a time


class _ListedObject(io.RawIOBase):
    """An S3 object's bytes as its listing gave them: each request sends ``If-Match`` with the listed
    ETag, so an object overwritten since, before its reading or between two of its ranges, fails the
    read (``changed``) rather than be read, whole or in part, in the listed one's place. Arrow's S3
    client cannot send the condition, so boto3 reads. A read of less than ``READ_AHEAD_BYTES`` asks
    for that much, and the next reads take from it (a small object is one request)."""

    def __init__(self, uri: str, etag: str) -> None:
        self.uri, self.etag, self.position = uri, f'"{etag}"', 0
        self.bucket, _, self.key = uri.removeprefix("s3://").partition("/")
        self.client = _reading_client(tuple(os.environ.get(name) for name in _AWS_READING), os.getpid())
        self.held_at, (self.held, self.length) = 0, self._get(0, READ_AHEAD_BYTES)  # the first also tells the length

    def _get(self, start: int, size: int) -> tuple[bytes, int]:
        """Up to ``size`` bytes from ``start``, and the object's length."""
        import botocore.exceptions

        try:
            try:
                store = (self.client.meta.endpoint_url, self.bucket)
                condition = {"IfMatch": self.etag} if store not in _UNCONDITIONAL else {}
                answer = self.client.get_object(
                    Bucket=self.bucket, Key=self.key, Range=f"bytes={start}-{start + size - 1}", **condition
                )
            except botocore.exceptions.ClientError as error:
                if condition and error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 501:
                    # A store that does not take If-Match reads as before: an object overwritten while the
                    # run reads it is not seen (the next run reads it again).
                    log.warning(
                        "%s: this S3 store does not take conditional reads (If-Match): objects are read "
                        "without; one overwritten while a run reads it is not told apart",
                        self.uri,
                    )
                    _UNCONDITIONAL.add(store)
                    return self._get(start, size)
                if error.response.get("Error", {}).get("Code") != "InvalidRange" or start:
                    raise
                # An empty object has no first byte to ask for; S3 checks If-Match before the range
                # (a 412 comes first), so this one is the listed one.
                return b"", 0
            with contextlib.closing(answer["Body"]) as body:
                data = body.read()
            total = answer.get("ContentRange", "").rpartition("/")[2]  # none where a store sends it whole
            return data, int(total) if total.isdigit() else answer["ContentLength"]
        except botocore.exceptions.ClientError as error:
            answer = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = error.response.get("Error", {}).get("Code")
            if answer == 412 or code == "PreconditionFailed":  # a HEAD's answer has no code, only its status
                raise Changed(changed(self.uri)) from None
            if _not_found(error):
                raise FileNotFoundError(errno.ENOENT, "no such object", self.uri) from None
            raise Unreadable.of(self.uri, OSError(str(error))) from None  # denied, throttled: as Arrow's reads
        except botocore.exceptions.BotoCoreError as error:  # the endpoint away
            raise Unreadable.of(self.uri, OSError(str(error))) from None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.position = max(0, {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.length}[whence] + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        size = min(len(buffer), self.length - self.position)
        if size <= 0:
            return 0
        offset = self.position - self.held_at
        data = self.held[offset : offset + size] if 0 <= offset < len(self.held) else b""
        if len(data) < size:  # filled whole: a short read would be taken for the file's end
            at, rest = self.position + len(data), size - len(data)
            fetched, _ = self._get(at, max(rest, READ_AHEAD_BYTES))
            if rest < READ_AHEAD_BYTES:
                self.held_at, self.held = at, fetched
            data += fetched[:rest]
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


# What decides the client that reads: where, and as whom.
_AWS_READING = (*_AWS_SETTINGS, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@functools.lru_cache(maxsize=8)
def _reading_client(_environment: tuple[str | None, ...], _process: int) -> Any:
    """One client for the inputs a process reads (making one takes about 40 ms: an object a document);
    not shared with a process forked from this one, whose requests would go over this one's connections."""
    return _s3_client()


def join(uri: str, *parts: str) -> str:
    return posixpath.join(uri, *parts) if is_s3(uri) else os.path.join(uri, *parts)


def key_as_a_path(uri: str) -> str | None:
    """For an ``s3://`` URI whose key a path's normalising changes (a ".", ".." or empty part, a trailing "/"):
    the URI of the key so normalised ("r/x/../b.png" as "r/b.png"); else None. S3 keys are literal, but
    Arrow's S3 file system reads the normalised key in such a key's place, or refuses it (an empty part):
    such a URI is not to be read through it as written; without a ``..`` part (``climbs``) its normalised key
    spells the same path another way, which the earlier release read in its place."""
    if not is_s3(uri):
        return None
    key = uri.removeprefix("s3://")
    normal = posixpath.normpath(key)
    return None if normal == key else f"s3://{normal}"


def exists_as_written(uri: str) -> bool:
    """Whether an object has the key of the S3 ``uri`` as written (a HEAD through boto3: Arrow asks about the key
    normalised, ``key_as_a_path``); ``Unreadable`` where S3 does not say (denied, throttled, away)."""
    import botocore.exceptions

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not key:  # "s3://bucket/": a bucket, no object (botocore refuses to ask)
        return False
    client = _reading_client(tuple(os.environ.get(name) for name in _AWS_READING), os.getpid())
    try:
        return _s3_key_exists(client, bucket, key)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        raise Unreadable.of(uri, OSError(str(error))) from None


def climbs(key: str) -> bool:
    """Whether an S3 key (or a URI, or a name in a folder) has a ``..`` part: normalised, it names another
    object ("x/../b.png" as "b.png"), where a "." or empty part does not take it out of its folder."""
    return ".." in key.split("/")


@dataclass(frozen=True)
class FileEntry:
    uri: str
    size: int
    mtime: str | None
    etag: str | None = None  # S3's content hash, from the same listing: a scheduled run's fingerprint


def _entry(info: pafs.FileInfo) -> FileEntry:
    mtime = info.mtime.isoformat() if info.mtime is not None else None
    return FileEntry(uri=info.path, size=info.size or 0, mtime=mtime)


def _is_glob(path: str) -> bool:
    return any(char in path for char in "*?[")


def _named_literally(fs: pafs.FileSystem, path: str) -> bool:
    """Whether a glob only by a ``[`` names a local file or folder that exists by that name (``exports [2026]``):
    read as named, as one who wrote it most likely meant (``_warn_of_the_pattern_not_read``); else it is a pattern."""
    return "[" in path and fs.get_file_info(path).type in (pafs.FileType.File, pafs.FileType.Directory)


def _read_as_glob(uri: str) -> bool:
    """Whether ``list_files`` reads ``uri`` as a glob: it has ``*``, ``?`` or ``[``, and not only by a ``[`` in
    the name of a file, folder or S3 object that exists (``_named_literally``, ``_list_s3_named``)."""
    path = path_of(uri)
    if "[" not in path:
        return _is_glob(path)
    if not is_s3(uri):
        return not _named_literally(filesystem(uri)[0], path)
    import botocore.exceptions

    bucket, _, key = path.partition("/")
    try:
        return not _list_s3_named(_s3_client(), uri, bucket, key)[0]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise StorageError(f"{uri}: cannot list: {exc}") from None


def _warn_of_the_pattern_not_read(uri: str, path: str) -> None:
    """Name what a local path read by its name (``_named_literally``) matches as a pattern: ``a[12].jsonl``
    read the file of that name, where ``a1.jsonl`` and ``a2.jsonl`` may have been meant."""
    matched = [found for found in iglob(path) if found != path]
    if matched:
        # Without its '/', a glob names files only (``_glob_match``): the folder's escaped name would match none.
        escaped = uri.replace("[", "[[]").rstrip("/") + ("/" if os.path.isdir(path) else "")
        log.warning(
            "%s: read as the file or folder of that name; read as a pattern ('[...]' matches one of the characters "
            "inside) it matches %s instead: write the name as %s to say it is the one meant, or the pattern so that "
            "nothing has it as its name (its class's characters in another order) to read those",
            uri,
            some_named(matched),
            escaped,
        )


def pattern_hint(path: str) -> str:
    """What to add to "nothing matches ``path``" where a ``[`` in it made it a pattern."""
    if "[" not in path or not _read_as_glob(path):
        return ""
    return (
        " (read as a pattern: '[...]' matches one of the characters inside, and no file or folder has the name as "
        "written; in a pattern, '[[]' is a literal '[')"
    )


@functools.lru_cache(maxsize=64)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as shells read it: ``*``, ``?`` and ``[...]`` within one path segment, ``**`` across
    segments (fnmatch's ``*`` crosses ``/``: ``*.jsonl`` beside the output matched every shard under it)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] in "*?":
            out.append("[^/]*" if pattern[i] == "*" else "[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            # A '[' or a backslash in a class is one of its characters, as in a shell's glob ('[[]': a literal '[').
            body = pattern[i + 1 : end].replace("\\", "\\\\").replace("[", "\\[")
            out.append(f"[{'^' + body[1:] if body.startswith('!') else body}]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    try:
        return re.compile("".join(out) + r"\Z")
    except re.error:
        raise StorageError(f"{pattern}: not a glob this reader understands (*, ?, [abc], [!abc], **)") from None


def _glob_match(path: str, pattern: str) -> bool:
    """``path`` matches ``pattern``, and no hidden or in-the-making part (see ``_visible``) lies below
    the pattern's fixed base: a glob does not reach into ``_staging/`` or ``.git/`` either. A glob
    ending in ``/`` names folders: it matches the files under them a folder source would read."""
    folders = pattern.endswith("/")
    matched = _glob_regex(pattern + "**" if folders else pattern).match(path)
    return bool(matched) and _visible(path[len(_glob_base(pattern)) :].lstrip("/"))


def _glob_base(path: str) -> str:
    while _is_glob(path):
        path = posixpath.dirname(path)
    return path


# What Hive writes as the folder of rows whose partition value is null.
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def hive_partitions(source: str, uri: str) -> dict[str, str | None]:
    """The ``key=value`` folders of ``uri`` below the fixed part of ``source`` (the path a source names,
    a folder or a glob), as Spark and Hive lay out a partitioned table (``tx/year=2024/month=05/a.parquet``),
    values unquoted as they write them (``%2F``). A key given twice is an error: which value the rows
    hold would be a guess."""
    return partitions_below(hive_base(source), uri)


def hive_base(source: str) -> str:
    """The path below which ``hive_partitions`` finds a source's partition folders."""
    return _glob_base(path_of(source)).rstrip("/")


def partitions_below(base: str, uri: str) -> dict[str, str | None]:
    """``hive_partitions``, given the source's ``hive_base``."""
    path = path_of(uri)
    below = path[len(base) :] if path.startswith(base + "/") else ""
    found: dict[str, str | None] = {}
    for part in below.strip("/").split("/")[:-1]:
        key, equals, value = part.partition("=")
        if not equals or not key:
            continue
        key = urllib.parse.unquote(key)
        if key in found:
            raise StorageError(f"{uri}: the partition folder {key!r} comes twice in the path: rename one of them")
        found[key] = None if value == HIVE_NULL else urllib.parse.unquote(value)
    return found


def _in_folder(path: str, folder: str) -> bool:
    return _visible(os.path.relpath(path, folder))


def _visible(relative: str) -> bool:
    """Under a folder, as data lakes lay it out: what is hidden or in the making (``.x``, ``_x``: a file
    such as ``_SUCCESS``, a folder such as ``_temporary/`` or our ``_staging/``, the empty ``x_$folder$``
    Hadoop's S3 clients write for a folder) is skipped, but not a partition folder whose key starts
    with ``_`` (``_batch=7/``), which Spark reads too."""
    return not any(
        part.startswith(".") or (part.startswith("_") and "=" not in part) or part.endswith("_$folder$")
        for part in relative.split("/")
    )


def list_files(
    uri: str,
    suffixes: tuple[str, ...] = (),
    name_unread: bool = False,
    bare: bool = False,
    links_out: dict[str, str] | None = None,
    links_repeated: dict[str, str] | None = None,
) -> list[FileEntry]:
    """Files at a path, under a folder (recursively) or matching a glob, sorted by URI.

    Under a folder (or a glob ending in ``/``) only names ending in one of ``suffixes`` are kept, and
    with ``bare`` names without any suffix (Hive's ``000000_0``, an Athena query's output); with
    ``name_unread`` the others are named in a warning (a folder of exports with a ``.txt`` among the
    ``.csv`` files: its records would otherwise be left out without a word). With ``links_out``, a local
    file under a folder (or a glob's fixed part) reached through a link that leads out of it is left out
    and named in a warning, and put in ``links_out`` (the link -> where it leads). With ``links_repeated``,
    each local file is listed once: a path through a link to a file listed under another path (a link to
    a file or folder beside it, or to a folder above it, ``up -> ..``) is left out, named in a warning and
    put in ``links_repeated`` (the path -> the path the file is listed at). Without it, every path to a
    file is listed (an ``images`` sidecar may name an image by either), but a folder is never looked
    into again below itself.
    """

    def reads(uri: str) -> bool:
        name = uri.lower()
        return name.endswith(suffixes) or (bare and _bare(posixpath.basename(name)))

    if is_s3(uri):
        entries, folder = _list_s3(uri)
    else:
        entries, folder = _list_local(uri, suffixes, links_out, links_repeated, reads if suffixes else _always)
    if not suffixes or not folder:
        return entries
    kept: list[FileEntry] = []
    unread: list[str] = []
    packed: list[str] = []  # compressed with a codec no reader here unpacks
    for entry in entries:
        if reads(entry.uri):
            kept.append(entry)
        else:
            (packed if entry.uri.lower().endswith(UNREAD_CODECS) else unread).append(entry.uri)
    if name_unread and unread:
        log.warning(
            "%s: not read: not a kind of file this source reads (%s): %s", uri, ", ".join(suffixes), some_named(unread)
        )
    if name_unread and packed:
        log.warning(
            "%s: not read: compressed with a codec this source cannot unpack (Hadoop's %s; it reads %s), write "
            "them with gzip, zstd or bzip2, or uncompressed: %s",
            uri,
            ", ".join(UNREAD_CODECS),
            ", ".join(PACKED_SUFFIXES),
            some_named(packed),
        )
    return kept


def _bare(name: str) -> bool:
    """A name without a suffix (Hive's ``000000_0``, an Athena query's output), or with only that of a
    compression ``open_input`` unpacks (``000000_0.gz``, ``000000_0.deflate``: such a table written compressed)."""
    stem, dot, suffix = name.rpartition(".")
    return not dot or (f".{suffix}" in PACKED_SUFFIXES and "." not in stem)


def readable(entries: list[FileEntry]) -> list[FileEntry]:
    """Inputs to read, unless an S3 key among them has an empty part (``in//a.jsonl``, a prefix joined
    with one slash too many): Arrow's S3 client refuses such a path, so it is named at listing, where
    ``curation check`` sees it too, rather than as a damaged file halfway through the run."""
    refused = [entry.uri for entry in entries if is_s3(entry.uri) and "//" in entry.uri.removeprefix("s3://")]
    if refused:
        raise StorageError(
            f"{some_named(refused)}: an S3 key with an empty part ('//') cannot be read (Arrow's S3 client refuses "
            "it); copy the object to a key without one"
        )
    return entries


def some_named(uris: Collection[str], shown: int = 5) -> str:
    """The first ``shown`` of ``uris`` in order, and how many more."""
    return ", ".join(sorted(uris)[:shown]) + (f" and {len(uris) - shown} more" if len(uris) > shown else "")


def _always(path: str) -> bool:
    return True


def _list_local(
    uri: str,
    suffixes: tuple[str, ...],
    links_out: dict[str, str] | None = None,
    links_repeated: dict[str, str] | None = None,
    reads: Callable[[str], bool] = _always,
) -> tuple[list[FileEntry], bool]:
    """The visible files ``uri`` names, and whether it names a folder (or a glob of folders); with
    ``links_out`` and ``links_repeated``, not those reached through a link that leads out of it or back
    to a file listed already (see ``list_files``, and ``reads`` there)."""
    fs, path = filesystem(uri)
    try:
        literal = _is_glob(path) and _named_literally(fs, path)
        glob = _is_glob(path) and not literal
        if literal:
            _warn_of_the_pattern_not_read(uri, path)
    except OSError as exc:
        raise StorageError(f"{uri}: cannot list: {exc}") from None
    if glob and uri.endswith("/"):
        path += "/"  # a glob of folders (see _glob_match); made absolute, the path lost its slash
    folder = path.endswith("/") or not glob
    try:
        if glob:
            root = _glob_base(path)
            wanted = functools.partial(_glob_match, pattern=path)
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.File:
                return [_entry(info)], False
            if info.type != pafs.FileType.Directory:
                raise NotThere(f"{uri}: no such file or folder")
            wanted = functools.partial(_in_folder, folder=path)
            root = path
        if not isinstance(fs, pafs.LocalFileSystem):  # a wrapped one (tests): Arrow's listing, links and all
            infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
            found = [i for i in infos if i.type == pafs.FileType.File and wanted(i.path)]
        else:
            root = os.path.normpath(root)
            # Where a file is listed under a path that names only what it matches, a folder seen once is
            # all of it: one reached again holds the same files, left out whole (not so for a glob).
            on_the_way = _on_the_way(path) if glob else None
            tree = _walk(root, links_repeated is not None and not glob, on_the_way)
            # A loop such a glob's walk did not go round holds nothing it matches: not named as left out.
            folded = tree.folded if on_the_way is None else {}
            # Each listed path -> (its real path, whether reached through a link), as the walk found them.
            listed = {path: (real, through) for path, real, through in tree.files if wanted(path)}
            read = reads if folder else _always
            listed = _utf8_named(uri, listed, read)
            found = [info for path in listed if (info := _file_info(path)) is not None]
            _warn_of_broken_links(uri, tree.links, wanted, suffixes if folder else ())
            if links_out is not None and tree.links:
                found = _within(uri, root, found, listed, links_out, read)
            if links_repeated is not None:
                found = _once(uri, root, found, listed, folded, read, links_repeated)
    except OSError as exc:
        if isinstance(exc, StorageError):
            raise
        raise StorageError(f"{uri}: cannot list: {exc}") from None
    return sorted((_entry(i) for i in found), key=lambda e: e.uri), folder


def _utf8_named(
    uri: str, listed: dict[str, tuple[str, bool]], reads: Callable[[str], bool]
) -> dict[str, tuple[str, bool]]:
    """``listed`` but for the paths whose bytes are not UTF-8 (a Latin-1 tool's ``caf\\xe9.jsonl``), which
    Python holds with surrogates: no input's URI can carry one (Arrow, the state store and the manifest
    take UTF-8 text only, and failed deep inside with a bare UnicodeEncodeError). One the source reads fails
    the listing, before anything is read, rather than leave its records out; the others are named."""
    strange = {path: _escaped(path) for path in listed if not _is_utf8(path)}
    if not strange:
        return listed
    if read := [shown for path, shown in strange.items() if reads(path)]:
        raise StorageError(
            f"{some_named(read)}: a file name that is not UTF-8 (its bytes shown as \\xNN) cannot be read: an input "
            "is named by its path as UTF-8 text (its records' ids, lineage, the manifest); rename it with a UTF-8 "
            "name (convmv -f latin1 -t utf8 --notest renames Latin-1 names) and run again"
        )
    log.warning("%s: not read: a file name that is not UTF-8: %s", uri, some_named(list(strange.values())))
    return {path: found for path, found in listed.items() if path not in strange}


def _is_utf8(path: str) -> bool:
    try:
        path.encode()
    except UnicodeEncodeError:
        return False
    return True


def _escaped(path: str) -> str:
    """A path as its bytes, those that are not UTF-8 written ``\\xNN`` and a backslash doubled: else a name
    holding the four characters ``\\xe9`` reads as one holding that byte, and one stats key hides the other."""
    return os.fsencode(path).replace(b"\\", b"\\\\").decode(errors="backslashreplace")


@dataclass
class _Tree:
    files: list[tuple[str, str, bool]]  # path, real path, whether reached through a link
    links: set[str]  # the links not under another one: a path through one starts with it; broken ones too
    folded: dict[str, str]  # a folder not looked into (a loop, or listed already) -> the path it was listed at


def _walk(root: str, once: bool, on_the_way: Callable[[str], bool] | None = None) -> _Tree:
    """The files under a local folder, links followed, as Arrow's recursive listing gives them, but a
    folder is not looked into again below itself (``in/sub/up -> ..``: Arrow listed the folder again and
    again, 40 deep, until the path grew too long), nor at all with ``once``. Files not through a link
    come first, then those through links in the order of their paths, so that a folder is looked into at
    the first of those. Hidden folders (see ``_visible``) are passed over: nothing under one is listed. A
    folder ``on_the_way`` to what a glob matches is looked into, a loop or not (see ``_on_the_way``)."""
    tree = _Tree([], set(), {})
    seen: dict[str, str] = {}  # real path of a folder looked into -> the path it was listed at
    # A folder on the way to a glob's matches, as (real path, depth): reached again at the same depth (through
    # another of several loop links, ``l0 -> .``, ``l1 -> .``) it leads to the same files, which a fixed-depth
    # glob's walk otherwise listed under every path round the loops (exponential in the depth).
    walked: set[tuple[str, int]] = set()
    # (through a link, path, real path, real paths of the folders above it)
    heap: list[tuple[bool, str, str, tuple[str, ...]]] = [(False, root, os.path.realpath(root), ())]
    while heap:
        through, folder, real, above = heapq.heappop(heap)
        ahead = on_the_way is not None and on_the_way(folder)
        if (real in above and not ahead) or (once and real in seen):
            tree.folded[folder] = seen[real]
            continue
        if ahead:
            if (real, depth := folder.count("/")) in walked:
                continue
            walked.add((real, depth))
        seen.setdefault(real, folder)
        try:
            entries = os.scandir(folder)
        except FileNotFoundError:
            if folder == root:  # a glob's fixed part that is not there: nothing matches
                return tree
            raise
        with entries:
            for entry in entries:
                if entry.is_symlink():
                    if not through:
                        tree.links.add(entry.path)
                    try:
                        is_dir, is_file = entry.is_dir(), entry.is_file()
                    except OSError as error:  # a link to itself or round a loop of links: not read (named)
                        if error.errno == errno.ELOOP:
                            continue
                        raise  # where it may not look: the listing fails, as Arrow's did, not a folder left out
                    if is_dir and _visible(entry.name):
                        heapq.heappush(heap, (True, entry.path, os.path.realpath(entry.path), (*above, real)))
                    elif is_file:
                        tree.files.append((entry.path, os.path.realpath(entry.path), True))
                elif entry.is_dir(follow_symlinks=False):
                    if _visible(entry.name):
                        heapq.heappush(heap, (through, entry.path, f"{real}/{entry.name}", (*above, real)))
                elif entry.is_file(follow_symlinks=False):
                    tree.files.append((entry.path, f"{real}/{entry.name}", through))
    return tree


def _on_the_way(pattern: str) -> Callable[[str], bool] | None:
    """For a glob of a fixed depth (no ``**``, not a glob of folders), whether a folder lies on the way to
    what it matches: ``d/*/up/*.jsonl`` names ``d/sub/up/a.jsonl`` through ``sub/up -> ..``, which the walk,
    cutting the loop, listed only as ``d/a.jsonl``, which the glob does not match. Its depth bounds the walk
    round a loop. None for other paths: a loop is cut."""
    if not _is_glob(pattern) or "**" in pattern or pattern.endswith("/"):
        return None
    parts = [_glob_regex(part) for part in pattern.split("/")]

    def on_the_way(folder: str) -> bool:
        names = folder.split("/")
        return len(names) < len(parts) and all(part.match(name) for part, name in zip(parts, names, strict=False))

    return on_the_way


def _file_info(path: str) -> pafs.FileInfo | None:
    """As Arrow's listing gives a file: size and time of what a link leads to."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:  # gone since it was listed
        return None
    return pafs.FileInfo(path, pafs.FileType.File, mtime_ns=stat.st_mtime_ns, size=stat.st_size)


def _once(
    uri: str,
    root: str,
    found: list[pafs.FileInfo],
    listed: dict[str, tuple[str, bool]],
    folded: dict[str, str],
    reads: Callable[[str], bool],
    links_repeated: dict[str, str],
) -> list[pafs.FileInfo]:
    """Each file of ``found`` once: under its path without a link where it has one, else the first of
    its paths (sorted). A path through a link to a file (or folder) listed already goes to
    ``links_repeated`` with the path it is listed at, and is named. A file is kept once among those
    the source reads and once among the others (``b.jsonl -> a.txt``: read as ``b.jsonl``, ``a.txt``
    named as not read)."""
    first: dict[tuple[bool, str], str] = {}
    kept: list[pafs.FileInfo] = []
    # Only what the source reads is named: a linked folder of scripts or a second name of a README is not.
    read = [path for path in listed if reads(path)]
    again = {
        path: at
        for path, at in folded.items()
        if _in_folder(path, root) and any(file.startswith(f"{at}/") for file in read)
    }
    for info in sorted(found, key=lambda info: (listed[info.path][1], info.path)):
        key = (reads(info.path), listed[info.path][0])
        if key in first:
            if key[0]:
                again[info.path] = first[key]
        else:
            first[key] = info.path
            kept.append(info)
    # A folder left out whole may have a name that is not UTF-8 (its files are not listed, so not refused):
    # the manifest and the log take UTF-8 text only.
    again = {_escaped(path): _escaped(at) for path, at in again.items()}
    links_repeated.update(again)
    if again:
        _not_read(
            uri, "a path through a link to what the source reads under another path (it would be read twice)", again
        )
    return kept


def _not_read(uri: str, why: str, paths: dict[str, str]) -> None:
    """One warning naming the paths left out of a listing and where each leads."""
    log.warning("%s: not read: %s: %s", uri, why, some_named([f"{path} -> {at}" for path, at in paths.items()]))


def _within(
    uri: str,
    root: str,
    found: list[pafs.FileInfo],
    listed: dict[str, tuple[str, bool]],
    links_out: dict[str, str],
    reads: Callable[[str], bool] = _always,
) -> list[pafs.FileInfo]:
    """The files of ``found`` that are inside ``root`` with links followed (``root`` itself resolved: the
    folder reached through a link is fine, and so is a link within it). Arrow's listing follows every
    link, so one in the folder to ``/etc/passwd`` or a folder elsewhere was read as input, which the
    recipe never pointed at; each such path the source ``reads`` goes to ``links_out`` with where it
    leads, and is named (the others stay, to be named as files of a kind it does not read)."""
    folder = os.path.realpath(root)
    kept: list[pafs.FileInfo] = []
    out: dict[str, str] = {}
    for info in found:
        target, through = listed[info.path]
        if reads(info.path) and through and os.path.commonpath([folder, target]) != folder:
            out[info.path] = _escaped(target)  # where it leads may be a name that is not UTF-8 (not the link: listed)
            continue
        kept.append(info)
    links_out.update(out)
    if out:
        why = f"a link that leads out of the source's folder {root} (copy the file in, or point a source at where it leads)"
        _not_read(uri, why, out)
    return kept


def _warn_of_broken_links(uri: str, links: set[str], wanted: Callable[[str], bool], suffixes: tuple[str, ...]) -> None:
    """Arrow's listing leaves out a link to a file that is not there (an input moved away from under
    its link): such an input (a name ending in one of ``suffixes``, if any) is named rather than
    passed over without a word."""
    broken = [
        found
        for found in links
        if wanted(found) and found.lower().endswith(suffixes or "") and not os.path.exists(found)
    ]
    if broken:
        log.warning("%s: not read: link to a file that is not there: %s", uri, some_named(broken))


def _list_s3(uri: str) -> tuple[list[FileEntry], bool]:
    """One S3 listing gives each object's size, time and ETag: the ETag is the fingerprint a scheduled
    run compares, so the objects are not listed a second time to get it (a page per 1,000 objects).
    Also whether ``uri`` names a folder (or a glob of folders)."""
    import botocore.exceptions  # only runs that read S3 pay for the import

    path = uri.removeprefix("s3://")
    bucket, _, key = path.partition("/")
    client = _s3_client()
    try:
        if _is_glob(path):
            # A glob only by a ``[`` may name an object or folder by its name (``exports [2026]/``): read as named
            # where it exists, as there is no other way to name it.
            named = _list_s3_named(client, uri, bucket, key) if "[" in path else ([], True)
            if named[0]:
                return named
            base = _glob_base(path)
            prefix = _folder(base.partition("/")[2])
            found = [e for e in _files(_s3_objects(client, bucket, prefix)) if _glob_match(e.uri[5:], path)]
            return sorted(found, key=lambda e: e.uri), path.endswith("/")
        return _list_s3_named(client, uri, bucket, key)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise StorageError(f"{uri}: cannot list: {exc}") from None


def _list_s3_named(client: Any, uri: str, bucket: str, key: str) -> tuple[list[FileEntry], bool]:
    """The object ``key`` names, or the objects under it as a folder (``_list_s3``)."""
    import botocore.exceptions

    if key and not key.endswith("/"):
        # One object, if it is one: read access to it is enough, as for reading it.
        try:
            head = client.head_object(Bucket=bucket, Key=key)
            modified = head["LastModified"].isoformat()
            if head["ContentLength"] or not _holds_objects(client, bucket, f"{key}/"):
                return [FileEntry(uri, head["ContentLength"], modified, etag=_etag(head))], False
            # An empty object named as the folder beside it (`data.jsonl` beside Spark's
            # `data.jsonl/part-*`, written by some tools as a folder marker): the path names the folder.
        except botocore.exceptions.ClientError as error:
            if not _not_found(error):
                raise  # denied, throttled, down: not "no such object"

    # A folder on S3 is there while it holds objects: one emptied (inputs moved away once taken)
    # lists nothing, which the source decides about (see ListedFiles.entries).
    folder = _folder(key)
    found = _files(_s3_objects(client, bucket, folder))
    found = [e for e in found if _visible(e.uri.removeprefix(f"s3://{bucket}/{folder}"))]
    return sorted(found, key=lambda e: e.uri), True


def _files(objects: Iterable[FileEntry]) -> list[FileEntry]:
    """The objects that are files: an empty object with objects under it as a folder (``2026`` beside
    ``2026/a.jsonl``, a folder marker some tools write) is that folder, as on local disk, not an input
    (a glob matched it, and its name told no format)."""
    found = list(objects)
    uris = sorted(entry.uri for entry in found)

    def holds_objects(uri: str) -> bool:
        after = bisect.bisect_left(uris, f"{uri}/")
        return after < len(uris) and uris[after].startswith(f"{uri}/")

    return [entry for entry in found if entry.size or not holds_objects(entry.uri)]


def _holds_objects(client: Any, bucket: str, prefix: str) -> bool:
    """Whether any object lies under ``prefix``; False where listing is not allowed (read access to
    one object is enough to read it)."""
    import botocore.exceptions

    try:
        return bool(client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount"))
    except botocore.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") != "AccessDenied":
            raise
        return False


def _folder(key: str) -> str:
    """An S3 key prefix as a folder ("a/b" -> "a/b/"; the bucket's root -> "")."""
    return f"{key.rstrip('/')}/" if key.strip("/") else ""


def _s3_objects(client: Any, bucket: str, prefix: str) -> Iterator[FileEntry]:
    """Every object under ``prefix`` (folder markers are no files), with size, time and ETag."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if not item["Key"].endswith("/"):
                yield FileEntry(
                    uri=f"s3://{bucket}/{item['Key']}",
                    size=item["Size"],
                    mtime=item["LastModified"].isoformat(),
                    etag=_etag(item),
                )


def _etag(described: dict[str, Any]) -> str | None:
    """An object's ETag; None where the store leaves it out (some S3-compatible ones list none): its
    fingerprint is then its size and time (``fingerprint``)."""
    etag = described.get("ETag")
    return etag.strip('"') if etag else None


def s3_objects(uri: str) -> dict[str, FileEntry]:
    """Every object under an S3 prefix (hidden ones too), by path relative to it, with size and ETag."""
    import botocore.exceptions

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    root = f"s3://{bucket}/{_folder(key)}"
    try:
        return {e.uri.removeprefix(root): e for e in _s3_objects(_s3_client(), bucket, _folder(key))}
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise StorageError(f"{uri}: cannot list: {exc}") from None


def copy_published(fs: pafs.FileSystem, source: str, target: str) -> None:
    """A published file into a new version. On local disk a hard link: a published file is never
    written again, so each scheduled version shares the bytes of what it carries rather than holding
    another copy of the whole dataset (another device or a filesystem without links: copied). On S3,
    a server-side copy."""
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    fs.copy_file(source, target)


def make_dirs(fs: pafs.FileSystem, path: str) -> None:
    """Create a local folder; S3 has no folders, and a marker object would only be clutter."""
    if not isinstance(fs, pafs.S3FileSystem):
        fs.create_dir(path, recursive=True)


def _s3_key_exists(client: Any, bucket: str, key: str) -> bool:
    import botocore.exceptions

    try:
        client.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as error:
        if _not_found(error):
            return False
        raise
    return True


def _not_found(error: Any) -> bool:
    """Whether an S3 ``ClientError`` says there is no such object: a HEAD's answer has no code of its
    own (botocore gives its status, "404"), a GET's says ``NoSuchKey``; some stores say ``NotFound``."""
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 404 or error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def put_if_absent(uri: str, body: bytes) -> bool:
    """Write an S3 object only where there is none (``If-None-Match: *``): of runs writing one key at
    once, exactly one gets True. pyarrow cannot send the condition, so boto3 writes it."""
    import botocore.exceptions

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    client = _s3_client()
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
    except botocore.exceptions.ClientError as error:
        # 409 ConditionalRequestConflict: a write of the same key still in flight, which may land first.
        if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 501:
            raise StorageError(f"{uri}: cannot write: {error}") from None
        # A store that answers 501 Not Implemented to conditional writes: runs sharing one state store are
        # kept apart by its lock all the same, and a key there already (a stalled run's claim) is looked for
        # first; only two stores writing at the same moment are not kept apart.
        log.warning(
            "%s: this S3 store does not take conditional writes (If-None-Match): written where it was not found "
            "a moment before; two runs publishing here must share one state store",
            uri,
        )
        try:
            if _s3_key_exists(client, bucket, key):
                return False
            client.put_object(Bucket=bucket, Key=key, Body=body)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as again:
            raise StorageError(f"{uri}: cannot write: {again}") from None
    except botocore.exceptions.BotoCoreError as error:
        raise StorageError(f"{uri}: cannot write: {error}") from None
    return True
