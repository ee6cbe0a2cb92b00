"""`python -m curation.cli` in a process of its own, as users and scripts run it, without paying each time
for a fresh interpreter's imports of the heavy libraries (two to five seconds a run on the test machine).

The runs are forked from a multiprocessing fork server that has imported those third-party libraries
once. Each run then does what `python -m curation.cli ARGS` does: its own working folder, environment,
stdout and stderr, this checkout's modules imported afresh under that environment (so a setting read at
import, as COLUMNS is, is the run's), the module run as ``__main__``, and its exit status the process's.
Tests of signals, of Ray, or of an interpreter set up differently start a real interpreter instead."""

from __future__ import annotations

import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The slow imports, none of which reads the settings the runs change. Polars is left out: it warns that a
# fork after its import can deadlock; so are this checkout's modules, which each run imports itself.
PRELOAD = [
    "numpy",
    "pandas",
    "pyarrow.compute",
    "pyarrow.dataset",
    "pyarrow.parquet",
    "sqlalchemy.dialects.sqlite",
    "sqlalchemy.orm",
    "pydantic",
    "scipy.sparse",
    "boto3",
    "jinja2",
    "ftfy",
]

_forkserver = multiprocessing.get_context("forkserver")
_forkserver.set_forkserver_preload(PRELOAD)


def _redirect(fd: int, path: str, flags: int) -> None:
    opened = os.open(path, flags)
    os.dup2(opened, fd)
    os.close(opened)


def _cli(args: list[str], cwd: str, env: dict[str, str], streams: str) -> None:
    """The child: `python -m curation.cli *args` with stdin, stdout and stderr the files in ``streams``."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    _redirect(0, f"{streams}/stdin", os.O_RDONLY)
    _redirect(1, f"{streams}/stdout", os.O_WRONLY)
    _redirect(2, f"{streams}/stderr", os.O_WRONLY)
    # As an interpreter sets them up over pipes: UTF-8, stderr escaping what it cannot encode.
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115  (the process's own, for its whole life)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.path[:0] = [cwd, str(ROOT)]  # as `python -m` with PYTHONPATH=ROOT puts them first
    sys.argv = ["-m", *args]  # run_module puts the module's file first, as `python -m` does
    try:
        runpy.run_module("curation.cli", run_name="__main__", alter_sys=True)
    except (SystemExit, KeyboardInterrupt):
        raise  # the exit status, from multiprocessing, as from an interpreter
    except BaseException:
        sys.excepthook(*sys.exc_info())  # an uncaught error's traceback, as an interpreter prints it
        sys.exit(1)


def cli_env() -> dict[str, str]:
    """The test's environment, a wide terminal without colour, and this checkout's code first."""
    return {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}


def curation(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    stdin: str = "",
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run `curation ARGS` in ``cwd`` with ``env`` (the test's own, 200 columns wide, without colour, if not given)."""
    settings = dict(env) if env is not None else cli_env()
    if settings.get("PYTHONPATH") != str(ROOT):  # a forked process has its import path already
        raise ValueError("a PYTHONPATH other than the checkout's needs a fresh interpreter (subprocess.run)")
    with tempfile.TemporaryDirectory(prefix="curation-cli-") as streams:
        Path(streams, "stdin").write_text(stdin, encoding="utf-8")
        Path(streams, "stdout").touch()  # there to read, even from a child that failed before opening it
        Path(streams, "stderr").touch()
        process = _forkserver.Process(target=_cli, args=(list(args), str(Path(cwd).resolve()), settings, streams))
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(["curation", *args], timeout)
        return subprocess.CompletedProcess(
            ["curation", *args],
            process.exitcode,
            Path(streams, "stdout").read_text(encoding="utf-8"),
            Path(streams, "stderr").read_text(encoding="utf-8"),
        )
