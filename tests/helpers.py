"""Small helpers the tests share: write inputs and recipes, read published output back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from curation.pipeline import RunResult, run_recipe
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


def set_aside(version_dir: Path) -> list[dict[str, Any]]:
    return read_lines(sorted((version_dir / "set_aside").glob("*.jsonl")))


def outputs(version_dir: Path) -> list[dict[str, Any]]:
    return read_lines(sorted(version_dir.glob("train/*.jsonl")) + sorted(version_dir.glob("validation/*.jsonl")))


def processed(version_dir: Path) -> list[dict[str, Any]]:
    """The output lines this version's own run wrote (its lineage), without those carried from earlier versions (their lineage rows say ``carried_from``)."""
    lines: dict[str, list[str]] = {}
    found = []
    for entry in read_lines(sorted((version_dir / "lineage").glob("*.jsonl"))):
        if "carried_from" in entry:  # a line carried from an earlier version
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


def refusing(refused: Path, filesystem: Callable[[str], tuple[Any, str]]) -> Callable[[str], tuple[Any, str]]:
    """``filesystem`` (a module's), with the file ``refused`` refused as ``Refusing`` does."""

    def refusing_filesystem(uri: str) -> tuple[Any, str]:
        fs, path = filesystem(uri)
        return Refusing(fs, str(refused)), path

    return refusing_filesystem
