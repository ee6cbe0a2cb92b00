"""Every path is a URI: a local path, ``file://`` or ``s3://bucket/key``.

S3 settings come from the standard AWS ones (``AWS_ENDPOINT_URL``, profile, region), so the
same recipe runs against AWS, MinIO or a local test server unchanged. pyarrow's S3 client does
not read ``AWS_ENDPOINT_URL`` itself, so we pass it on.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import posixpath
from dataclasses import dataclass

import pyarrow.fs as pafs


class StorageError(OSError):
    """A path that cannot be read or written; the message names it."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return _s3_filesystem(endpoint, region)


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
        return s3_filesystem(), uri.removeprefix("s3://")
    path = uri.removeprefix("file://")
    return pafs.LocalFileSystem(), os.path.abspath(path)


def join(uri: str, *parts: str) -> str:
    return posixpath.join(uri, *parts) if is_s3(uri) else os.path.join(uri, *parts)


@dataclass(frozen=True)
class FileEntry:
    uri: str
    size: int
    mtime: str | None


def _entry(uri_prefix: str, info: pafs.FileInfo) -> FileEntry:
    mtime = info.mtime.isoformat() if info.mtime is not None else None
    return FileEntry(uri=f"{uri_prefix}{info.path}", size=info.size or 0, mtime=mtime)


def list_files(uri: str, suffixes: tuple[str, ...] = ()) -> list[FileEntry]:
    """Files at a path, under a folder (recursively) or matching a glob, sorted by URI."""
    fs, path = filesystem(uri)
    prefix = "s3://" if is_s3(uri) else ""
    try:
        if any(char in path for char in "*?["):
            base = path
            while any(char in base for char in "*?["):
                base = posixpath.dirname(base)
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
            found = [i for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path)]
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.File:
                return [_entry(prefix, info)]
            if info.type != pafs.FileType.Directory:
                raise StorageError(f"{uri}: no such file or folder")
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            found = [
                i
                for i in infos
                if i.type == pafs.FileType.File
                and not i.base_name.startswith((".", "_"))
                and (not suffixes or i.base_name.lower().endswith(suffixes))
            ]
    except OSError as exc:
        if isinstance(exc, StorageError):
            raise
        raise StorageError(f"{uri}: cannot list: {exc}") from None
    return sorted((_entry(prefix, i) for i in found), key=lambda e: e.uri)


def make_dirs(fs: pafs.FileSystem, path: str) -> None:
    """Create a local folder; S3 has no folders, and a marker object would only be clutter."""
    if not isinstance(fs, pafs.S3FileSystem):
        fs.create_dir(path, recursive=True)
