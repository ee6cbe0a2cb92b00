"""Reading published dataset versions: only a version with a manifest exists."""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path

import pyarrow.fs as pafs
from pydantic import ValidationError

from connectors.storage import StorageError, Unreadable, filesystem, is_s3, join, s3_endpoint
from schemas.manifest import MANIFEST_NAME, Manifest

VERSION_DIR = re.compile(r"^v(\d+)$")
# What pyarrow says where no answer came from S3 (a network failure, an endpoint that is not there); any other
# error is S3's answer refusing the request (ACCESS_DENIED, INVALID_ACCESS_KEY_ID, SIGNATURE_DOES_NOT_MATCH...).
_NO_ANSWER = re.compile(r"NETWORK_CONNECTION|could not connect|resolve host|curlCode|timed out", re.IGNORECASE)


def dataset_uri(dest: str, dataset: str) -> str:
    return join(dest, dataset)


def version_uri(dest: str, dataset: str, version: int) -> str:
    return join(dest, dataset, f"v{version}")


def published_versions(dest: str, dataset: str) -> list[int]:
    """Version numbers that have a manifest, ascending."""
    uri = dataset_uri(dest, dataset)
    fs, path = filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as exc:
        raise StorageError(f"{uri}: cannot list: {exc}") from None
    # A bucket that is not there lists as empty: the run would read all its input, then fail to publish.
    if not infos and is_s3(uri) and not bucket_exists(fs, path.partition("/")[0]):
        raise StorageError(f"{dest}: no such bucket")
    if not infos and not is_s3(uri):
        # A file where a folder must be lists as empty too: the run would read all its input, then fail to publish.
        there = next(folder for folder in (Path(path), *Path(path).parents) if folder.exists())
        if not there.is_dir():
            raise StorageError(f"{there} is a file, not a folder: no version can be published under {dest}")
    return _with_manifest(fs, infos)


def _with_manifest(fs: pafs.FileSystem, infos: list[pafs.FileInfo]) -> list[int]:
    """The numbers of the version folders among ``infos`` that hold a manifest, ascending."""
    versions = []
    for info in infos:
        match = VERSION_DIR.match(info.base_name)
        is_version = match and info.type == pafs.FileType.Directory
        if is_version and fs.get_file_info(f"{info.path}/{MANIFEST_NAME}").type == pafs.FileType.File:
            versions.append(int(match.group(1)))
    return sorted(versions)


def refuse_unwritable_dest(dest: str, dataset: str) -> None:
    """Raise when a local ``dest`` cannot be written under, before any input is read (or, where nothing new is
    read, before publishing what review decisions changed): its nearest existing folder is written to (a file made
    and removed there; nothing of the dest is created). Else the run fails once all is read, in Arrow's words,
    never naming ``output.dest``."""
    if is_s3(dest):
        return
    wanted = Path(filesystem(dataset_uri(dest, dataset))[1])
    there = next(folder for folder in (wanted, *wanted.parents) if folder.exists())
    try:
        with tempfile.TemporaryFile(dir=there):
            pass
    except OSError as error:
        raise StorageError(f"output.dest {dest}: cannot be written ({there}: {error.strerror or error})") from None


def read_manifest(version_dir: str) -> Manifest:
    fs, path = filesystem(version_dir)
    try:
        with fs.open_input_stream(f"{path}/{MANIFEST_NAME}") as stream:
            return Manifest.model_validate_json(stream.read())
    except FileNotFoundError:
        if is_s3(version_dir) and not bucket_exists(fs, path.partition("/")[0]):
            raise StorageError(f"{version_dir}: there is no bucket {path.partition('/')[0]!r}") from None
        raise StorageError(f"{version_dir}: no {MANIFEST_NAME}; {_not_a_version(fs, version_dir, path)}") from None
    except OSError as error:  # denied, or unsigned for want of credentials: S3's 403, no missing manifest
        raise _unreadable(f"{version_dir}/{MANIFEST_NAME}", error) from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the file"
        raise StorageError(f"{version_dir}/{MANIFEST_NAME}: not a manifest ({where}: {first['msg']})") from None


def _not_a_version(fs: pafs.FileSystem, version_dir: str, path: str) -> str:
    """Why a folder without a manifest is no version: a dataset folder, or a name such as ``latest``
    beside the dataset's versions, names the published versions to pass instead."""
    folder = version_dir.rstrip("/")
    if versions := _versions_in(fs, path):
        return f"it is a dataset folder; pass one of its published versions: {_listed(folder, versions)}"
    parent, name = path.rpartition("/")[0], folder.rpartition("/")[2]
    beside = _versions_in(fs, parent) if parent else []
    dataset = folder.removesuffix(name).rstrip("/")
    if beside and not VERSION_DIR.match(name):
        return f"{name!r} is no version; pass one of the published versions beside it: {_listed(dataset, beside)}"
    # Not there now: never published, or deleted since.
    gone = "this version was not published, or was deleted since"
    return f"{gone}; the published versions beside it: {_listed(dataset, beside)}" if beside else gone


def _listed(dataset: str, versions: list[int]) -> str:
    """The newest five of ``versions`` as paths to pass."""
    shown = ", ".join(join(dataset, f"v{number}") for number in versions[-5:])
    return shown + (f" (or one of {len(versions) - 5} earlier)" if len(versions) > 5 else "")


def _versions_in(fs: pafs.FileSystem, path: str) -> list[int]:
    """The published versions in the folder at ``path``; none where it cannot be listed (only a hint hangs on it)."""
    try:
        return _with_manifest(fs, fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))
    except OSError:
        return []


def _unreadable(uri: str, error: OSError) -> StorageError:
    """A published file that the disk or S3 would not give, in one line: on S3 what it said (pyarrow's
    message names the bucket and key again, before it) and what to check."""
    if not is_s3(uri):
        return Unreadable.of(uri, error)
    said = str(error).partition("AWS Error ")[2].rstrip(".") or str(error)
    if _NO_ANSWER.search(said):
        endpoint = s3_endpoint()
        check = f"is the S3 endpoint {endpoint} reachable?" if endpoint else "is S3 reachable from here?"
    else:
        check = "AWS credentials? access to the bucket?"
    return StorageError(f"{uri}: cannot read: S3 said {said}; {check}")


def bucket_exists(fs: pafs.FileSystem, bucket: str) -> bool:
    """False only when S3 says the bucket is not there (a bucket we may not look at may still hold the version)."""
    try:
        return fs.get_file_info(bucket).type != pafs.FileType.NotFound
    except OSError:  # not allowed to ask (a policy that lets a role list one prefix only): the bucket is there
        return True


def verify_checksums(version_dir: str, manifest: Manifest) -> list[str]:
    """Files whose sha256 does not match the manifest (empty when the version is intact), and files in
    the split folders that it does not list: training reads a split's folder whole."""
    fs, path = filesystem(version_dir)
    expected = {shard.path: shard.sha256 for shard in manifest.all_files()} | manifest.side_file_sha256
    bad = []
    for relative, sha256 in expected.items():
        try:
            with fs.open_input_stream(f"{path}/{relative}") as stream:
                digest = hashlib.file_digest(stream, "sha256")
        except FileNotFoundError:
            bad.append(f"{relative} (missing)")
            continue
        except OSError as error:  # a policy that lets the manifest be read, not the data
            raise _unreadable(join(version_dir, relative), error) from None
        if digest.hexdigest() != sha256:
            bad.append(relative)
    known = set(expected) | set(manifest.side_files)
    for split in manifest.splits:
        listed = fs.get_file_info(pafs.FileSelector(f"{path}/{split}", recursive=True, allow_not_found=True))
        unlisted = (info.path[len(path) + 1 :] for info in listed if info.type == pafs.FileType.File)
        bad += sorted(f"{name} (not in the manifest)" for name in unlisted if name not in known)
    return bad
