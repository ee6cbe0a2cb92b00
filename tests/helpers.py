"""Small helpers the tests share: write inputs and recipes, read published output back."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from connectors.storage import filesystem
from curation.pipeline import RunResult, run_recipe
from curation.published import read_manifest
from curation.split import Splitter
from schemas.config import load_recipe

# A support request long enough that its near copies (one punctuation mark changed) clear near_dedup's threshold.
BILLING = "Please update the billing address on my account, the new one is 12 Elm Street, thanks a lot"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def write_recipe(folder: Path, recipe: dict[str, Any], name: str = "recipe.yaml") -> Path:
    recipe.setdefault("state", "sqlite:///state.db")
    path = folder / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def docs_recipe(path: str, **output: Any) -> dict[str, Any]:
    """A recipe publishing the JSONL ``{"text": ...}`` rows at ``path`` as dataset ``docs``."""
    recipe: dict[str, Any] = {"dataset": "docs", "sources": [{"path": path}], "record": {"kind": "document"}}
    if output:
        recipe["output"] = output
    return recipe


def run(folder: Path, recipe: dict[str, Any], full_refresh: bool = False) -> RunResult:
    return run_recipe(load_recipe(write_recipe(folder, recipe)), full_refresh=full_refresh)


def read_lines(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for path in paths for line in path.read_text().splitlines()]


def lineage_rows(version: Path | str) -> list[dict[str, Any]]:
    """A version's lineage rows in order, on disk or on S3: Parquet files, or the JSONL ones of a version published
    before lineage was Parquet. ``carried_from`` is None on the rows of the version's own run."""
    fs, root = filesystem(str(version))
    rows: list[dict[str, Any]] = []
    for shard in read_manifest(str(version)).lineage:
        with fs.open_input_file(f"{root}/{shard.path}") as stream:
            if shard.path.endswith(".parquet"):
                rows += pq.read_table(stream).to_pylist()
            else:
                rows += [{"carried_from": None, **json.loads(line)} for line in stream.read().splitlines()]
    return rows


def as_jsonl_lineage(version_dir: Path) -> None:
    """Make ``version_dir`` (on disk) a version published before lineage was Parquet: its lineage rows in
    ``lineage/part-NNNNN.jsonl`` files as that release wrote them (``carried_from`` only on carried rows, a null
    page written), one per Parquet file, and its manifest's entries for them (sizes, sha256)."""
    manifest = read_manifest(str(version_dir))
    shards = []
    for shard in manifest.lineage:
        parquet = version_dir / shard.path
        rows = pq.read_table(parquet).to_pylist()
        body = "".join(
            json.dumps({k: v for k, v in row.items() if k != "carried_from" or v is not None}, separators=(",", ":"))
            + "\n"
            for row in rows
        ).encode()
        parquet.unlink()
        path = shard.path.removesuffix(".parquet") + ".jsonl"
        (version_dir / path).write_bytes(body)
        shards.append(
            shard.model_copy(update={"path": path, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()})
        )
    manifest.lineage = shards
    (version_dir / "manifest.json").write_text(manifest.model_dump_json(indent=2))


def strict_json(text: str) -> Any:
    """``text`` parsed as JSON parsers other than Python's read it: ``NaN`` and ``Infinity`` are no JSON."""

    def refused(token: str) -> None:
        raise ValueError(f"{token} is no JSON")

    return json.loads(text, parse_constant=refused)


def set_aside(version_dir: Path) -> list[dict[str, Any]]:
    return read_lines(sorted((version_dir / "set_aside").glob("*.jsonl")))


def outputs(version_dir: Path) -> list[dict[str, Any]]:
    return read_lines(sorted(version_dir.glob("train/*.jsonl")) + sorted(version_dir.glob("validation/*.jsonl")))


def processed(version_dir: Path) -> list[dict[str, Any]]:
    """The output lines this version's own run wrote (its lineage), without those carried from earlier versions (their lineage rows say ``carried_from``)."""
    lines: dict[str, list[str]] = {}
    found = []
    for entry in lineage_rows(version_dir):
        if entry["carried_from"] is not None:  # a line carried from an earlier version
            continue
        shard = lines.setdefault(entry["shard"], (version_dir / entry["shard"]).read_text().splitlines())
        found.append(json.loads(shard[entry["line"] - 1]))
    return found


def watermark_values(state_db: Path) -> dict[str, str]:
    """Each watermark item and its stored value, from the SQLite state store at ``state_db``."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{state_db}")
    with engine.connect() as db:
        values = dict(db.execute(sa.text("SELECT item, value FROM watermarks")).all())
    engine.dispose()
    return values


def sqlite_db(path: Path, *statements: str) -> str:
    """A SQLite database at ``path`` after ``statements`` (in one transaction); its URL."""
    import sqlalchemy as sa

    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    with engine.begin() as db:
        for statement in statements:
            db.execute(sa.text(statement))
    engine.dispose()
    return url


class Refusing:
    """A local filesystem that refuses to open one file or list one folder (``refused``), as a file or folder
    under ``chmod 000`` (or a share gone away) refuses a run that is not root's (the tests may run as root,
    which reads it all the same)."""

    def __init__(self, fs: object, refused: str) -> None:
        self.fs, self.refused = fs, refused

    def open_input_stream(self, path: str, *args: object, **kwargs: object) -> object:
        if path == self.refused:
            raise PermissionError(13, f"Failed to open local file '{path}'. Detail: [errno 13] Permission denied")
        return self.fs.open_input_stream(path, *args, **kwargs)

    def open_input_file(self, path: str, *args: object, **kwargs: object) -> object:
        if path == self.refused:
            raise PermissionError(13, f"Failed to open local file '{path}'. Detail: [errno 13] Permission denied")
        return self.fs.open_input_file(path, *args, **kwargs)

    def get_file_info(self, what: object) -> object:
        if getattr(what, "base_dir", None) == self.refused:
            raise PermissionError(13, f"Cannot list directory '{self.refused}'. Detail: [errno 13] Permission denied")
        return self.fs.get_file_info(what)

    def __getattr__(self, name: str) -> object:  # every other call as the filesystem's
        return getattr(self.fs, name)


class FailsOnceMoved:
    """A filesystem whose ``move`` (to a ``dest`` ending in ``ending``) happens, then raises ``error``: a
    rename answered as failed though it was done (NFS), or a process killed right after it."""

    def __init__(self, fs: object, error: BaseException, ending: str = "") -> None:
        self.fs, self.error, self.ending = fs, error, ending

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)  # type: ignore[attr-defined]
        if dest.endswith(self.ending):
            raise self.error

    def __getattr__(self, name: str) -> object:  # every other call as the filesystem's
        return getattr(self.fs, name)


def refusing(refused: Path, filesystem: Callable[[str], tuple[Any, str]]) -> Callable[[str], tuple[Any, str]]:
    """``filesystem`` (a module's), with the file ``refused`` refused as ``Refusing`` does."""

    def refusing_filesystem(uri: str) -> tuple[Any, str]:
        fs, path = filesystem(uri)
        return Refusing(fs, str(refused)), path

    return refusing_filesystem


def seed_placing_group(fraction: float, in_validation: bool, group_by: str = "customer") -> str:
    """A split_seed that places the one group ``c1`` of ``group_by`` on the side asked for: a grouped split
    hashes the group key, not the record ids (which hold the input's absolute path, a test's temporary folder)."""
    table = pa.table({"id": ["r"], group_by: ["c1"]})

    def side(seed: str) -> bool:
        return Splitter(fraction, seed, group_by=group_by).assign(table)[0].as_py()

    return next(seed for seed in map(str, range(100)) if side(seed) == in_validation)
