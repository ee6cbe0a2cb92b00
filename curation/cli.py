"""The ``curation`` command.

Exit codes scripts can rely on: 0 the run published (or the check passed), 1 the run failed and
published nothing, 2 the recipe or the command line is wrong.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.filesize import decimal as file_size
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from curation.review.cli import review_app
from curation.stopping import Stopped, stop_name, stops_deferred, take_stop_signals
from schemas.config import Recipe, RecipeError, load_recipe, ray_missing, stage_place
from schemas.manifest import Manifest
from train.cli import app as train_app

if TYPE_CHECKING:
    from jinja2.nodes import Node as TemplateNode

    from curation.pipeline import RunResult

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

app = typer.Typer(
    name="curation",
    help="Turn your own data into fine-tuning datasets, and hand them to SageMaker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)  # messages whole: a log line keeps its file name in one piece
out = Console()

LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error")]


LEVELS = ("debug", "info", "warning", "error")
HEAD_FILES = 20  # files of each source whose head ``check`` reads: a folder of thousands, on S3 too, stays quick
HEARTBEAT_S = 60.0  # the least time between two progress lines in a log file (stderr not a terminal)

# Progress in a log file: said whatever --log-level (as the bar is on a terminal); --quiet says none.
progress_log = logging.getLogger("curation.progress")
progress_log.setLevel(logging.INFO)


def _configure_logging(level: str) -> None:
    if level.lower() not in LEVELS:
        raise typer.BadParameter(f"{level!r} is not one of {', '.join(LEVELS)}", param_hint="--log-level")
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        layout = "%(name)s %(message)s"
    else:
        # A log kept in a file (cron, CI) holds each message on one line: RichHandler wraps it at the
        # console's width, cutting a long file name in two where grep would look for it.
        handler = logging.StreamHandler(sys.stderr)
        layout = "%(asctime)s %(levelname)s %(name)s %(message)s"
    logging.basicConfig(level=level.upper(), format=layout, handlers=[handler], force=True)


def _load(recipe_path: Path) -> Recipe:
    try:
        return load_recipe(recipe_path)
    except RecipeError as error:
        console.print(f"[red]recipe error[/red] {escape(str(error))}", markup=True, highlight=False)
        raise typer.Exit(EXIT_USAGE) from None


def summary_table(manifest: Manifest, pieces: bool = False) -> Table:
    """What happened to every input record, by outcome and reason. With ``pieces`` (documents cut
    into pieces, ``chunk_chars``) a split's lines are pieces, not records, and are named so."""
    counts = manifest.counts
    table = Table(title=f"{manifest.dataset} v{manifest.version} ({manifest.format})")
    table.add_column("outcome")
    table.add_column("reason")
    table.add_column("records", justify="right")
    table.add_row("input", "", f"{counts.input:,}", style="bold")
    if manifest.carried_from is not None:  # the splits also hold records this run did not read
        table.add_row("written", "this run", f"{counts.written:,}")
        table.add_row("carried", f"from v{manifest.carried_from}", f"{counts.carried:,}")
        for split, info in manifest.splits.items():
            table.add_row("in version", escape(split), f"{info.records:,}" + (" pieces" if pieces else ""))
    else:
        # The run's records per side (a shard's lines are pieces with chunk_chars).
        sides = manifest.split.get("records", {})
        for split, info in manifest.splits.items():
            shown = f"{sides.get(split, info.records):,}"
            if pieces:
                shown += f" ({info.records:,} pieces)"
            table.add_row("written", escape(split), shown)
    for outcome in ("filtered", "duplicate", "quarantined"):
        for reason, count in counts.reasons.get(outcome, {}).items():
            # Not markup: a reason can name a recipe's column (expect_column_values_to_not_be_null:<column>).
            table.add_row(outcome, escape(reason), f"{count:,}")
    return table


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class _Heartbeat:
    """What the bar shows, as a log line at most every ``HEARTBEAT_S``, once all input of known size is read,
    and once the run ends: a log file (cron) gets no bar, and an hours-long run would otherwise say nothing
    until it ends."""

    def __init__(self) -> None:
        self.started = self.said = time.monotonic()
        self.total = self.read = self.written = 0
        self.read_all = False

    def start(self, total: int) -> None:
        self.total = total

    def input(self, done: int) -> None:
        self.read += done
        if self.total and not self.read_all and self.read >= self.total:
            self.read_all = True
            # Without the records written: with a dedup stage, or a short run, none are yet.
            self.say(self.bytes_read())
        else:
            self.beat()

    def output(self, records: int) -> None:
        self.written = records
        self.beat()

    def beat(self) -> None:
        if time.monotonic() - self.said >= HEARTBEAT_S:
            # A SQL table's size is not known: its bytes read would say "read 0 bytes" all along.
            read = f"{self.bytes_read()}, " if self.total else ""
            self.say(f"{read}{self.written:,} records written")

    def end(self) -> None:
        self.say(f"run ended, {self.written:,} records written")

    def bytes_read(self) -> str:
        return f"read {file_size(self.read)} of {file_size(self.total)} ({min(100, 100 * self.read // self.total)}%)"

    def say(self, what: str) -> None:
        self.said = time.monotonic()
        progress_log.info("progress: %s, %s", what, _elapsed(self.said - self.started))


def execute(recipe: Recipe, quiet: bool = False, full_refresh: bool = False, origin: Path | None = None) -> int:
    """Run a recipe with a progress bar; print where the output went. Returns the exit code. ``origin``:
    the recipe's file, which a recipe error found once records were read names (a scheduler's log holds
    the runs of many recipes). SIGTERM and ^C are said as a stopped run, from its start: never a traceback."""
    take_stop_signals()
    ran: list[RunResult] = []  # the run's result once it returned, or once its version was visible
    try:
        return _execute(recipe, quiet, full_refresh, origin, ran)
    except Stopped as stop:  # from its start: while the run's modules load (~1 s), in the run, as the bar closes
        return _stopped(stop, stop.published or (ran[0] if ran else None))


def _execute(recipe: Recipe, quiet: bool, full_refresh: bool, origin: Path | None, ran: list[RunResult]) -> int:
    from connectors.state import LockLost, RunLocked
    from curation.executors.local import AccountingError
    from curation.pipeline import NotRecorded, default_executor, run_recipe
    from curation.stages.base import StageError

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,  # a log file gets the heartbeat, not a bar's stray line
    )
    task = progress.add_task(f"curating {recipe.dataset}", total=None)
    heartbeat = _Heartbeat() if not quiet and progress.disable else None

    def started(total: int) -> None:
        progress.update(task, total=total or None)
        if heartbeat:
            heartbeat.start(total)

    def read(done: int) -> None:
        progress.advance(task, done)
        if heartbeat:
            heartbeat.input(done)

    def written(records: int) -> None:
        # The bar is the input read; after a dedup stage's barrier it is full while the writing goes on.
        progress.update(task, description=f"curating {recipe.dataset}: {records:,} records written")
        if heartbeat:
            heartbeat.output(records)

    try:
        with progress:
            ran.append(
                run_recipe(
                    recipe,
                    on_start=started,
                    on_input=read,
                    full_refresh=full_refresh,
                    on_written=written,
                    executor=default_executor(recipe, quiet),
                )
            )
        if heartbeat:
            heartbeat.end()
    except RunLocked as error:
        console.print(f"[red]not started[/red]: {escape(str(error))}", highlight=False)
        return EXIT_FAILED
    except NotRecorded as error:  # before the state store's errors: this one came once the version was visible
        ran.append(error.result)
        cause = state_problem(recipe.state, error.error) if isinstance(error.error, SQLAlchemyError) else error.error
        console.print(
            f"[yellow]published, not recorded[/yellow]: {escape(str(error.result.version_uri))} is visible, but the "
            f"state store did not record it ({escape(str(cause))}): the next run reads every input again",
            highlight=False,
        )
        return EXIT_FAILED
    except RecipeError as error:  # found only once records were read (a column no record has)
        said = _in_recipe(origin, recipe, str(error))
        console.print(f"[red]recipe error[/red], nothing published: {escape(said)}", highlight=False)
        return EXIT_USAGE
    except SQLAlchemyError as error:
        console.print(f"[red]state store error[/red], nothing published: {escape(state_problem(recipe.state, error))}")
        return EXIT_FAILED
    except StageError as error:  # a stage that cannot go on: the recipe and its place, as a recipe error
        said = _in_recipe(origin, recipe, str(error))
        console.print(f"[red]run failed[/red], nothing published: {escape(said)}", highlight=False)
        return EXIT_FAILED
    except (OSError, AccountingError, ValueError, LockLost) as error:
        console.print(f"[red]run failed[/red], nothing published: {escape(str(error))}", highlight=False)
        return EXIT_FAILED
    return _report(ran[0], recipe)  # a stop while the summary is printed: execute says the run had published


def _in_recipe(origin: Path | None, recipe: Recipe, message: str) -> str:
    """``message`` after the recipe file and the place in it of the stage it names
    (``recipe.yaml: stages.2 (line 13): expectations_2: ...``), where they are known."""
    if origin is None or message.startswith(f"{origin}:"):
        return message
    place = stage_place(origin, recipe, message)
    return f"{origin}: {place + ': ' if place else ''}{message}"


def _stopped(stop: BaseException, published: RunResult | None) -> int:
    """Say what a run stopped by SIGTERM or ^C published (``published``: its result, once its version was
    visible), and the exit code."""
    with stops_deferred():  # a second signal while this is said: not a traceback, nor said otherwise
        signum = int(stop.args[0])
        name = stop_name(signum)
        if published is not None and published.version_uri is not None:  # visible, and recorded
            console.print(
                f"[red]stopped[/red] by {name} after publishing {escape(str(published.version_uri))}", highlight=False
            )
        else:
            console.print(f"[red]stopped[/red] by {name}, nothing published", highlight=False)
        return 128 + signum


@contextlib.contextmanager
def stopped_before_reading() -> Iterator[None]:
    """SIGTERM and ^C from a command's start, before the run (``execute``, which takes them from there) has
    read anything: said as a stopped run says it, nothing published, and exit 128 + the signal, not a
    bare exit 130 (^C) or a silent death (SIGTERM) while a slow recipe file loads."""
    take_stop_signals()
    try:
        yield
    except Stopped as stop:
        raise typer.Exit(_stopped(stop, None)) from None


def _report(result: RunResult, recipe: Recipe) -> int:
    """Print what a run that ended published (or why it published nothing) and return the exit code."""
    if result.manifest is None:  # a scheduled run that found nothing new: not a failure
        out.print(result.message, highlight=False, markup=False)  # it can quote a file name or an error
        return EXIT_OK
    out.print(summary_table(result.manifest, pieces=recipe.output.chunk_chars is not None))
    # Paths are printed whole (soft wrap), so a script or a terminal can copy them.
    out.print(f"published [bold]{escape(str(result.version_uri))}[/bold]", highlight=False, soft_wrap=True)
    out.print(f"data-quality report: {escape(str(result.version_uri))}/report.html", highlight=False, soft_wrap=True)
    if result.manifest.carried_from is not None:
        done = result.manifest
        replaced = done.stats.get("carry", {}).get("replaced", 0)
        out.print(
            f"v{done.version} holds the whole dataset: {done.counts.written:,} new record(s) and "
            f"{done.counts.carried:,} carried from v{done.carried_from}"
            + (f"; {replaced:,} carried record(s) replaced by what their inputs hold now" if replaced else ""),
            highlight=False,
        )
    elif result.manifest.extends is not None:
        out.print(f"v{result.manifest.version} holds what is new since v{result.manifest.extends}", highlight=False)
    done = result.manifest
    if not any(split.records for split in done.splits.values()):
        # Exit 0 all the same (the run did its work), but a scheduled job's log should not read as a
        # success: the table's counts alone are easy to pass over, and training refuses such a version.
        why = (
            f"every one of the {done.counts.input:,} read was set aside (see set_aside/ and report.html)"
            if done.counts.input
            else "its input gave none (an empty file?)"
        )
        console.print(
            f"[yellow]warning[/yellow] {done.dataset} v{done.version} holds no record: {why}", highlight=False
        )
    return EXIT_OK


@app.command()
@stopped_before_reading()  # a stop before execute takes the signals is said too (execute says every one after)
def run(
    recipe: Annotated[Path, typer.Argument(help="the recipe YAML")],
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="no progress (the bar, or in a log file its lines)")
    ] = False,
    full_refresh: Annotated[
        bool, typer.Option("--full-refresh", help="forget what earlier runs took and read all input again")
    ] = False,
    log_level: LogLevel = "warning",
    engine: Annotated[
        str | None, typer.Option("--engine", help="local (embedded, the default) or ray; overrides the recipe's engine")
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="the Ray cluster to run on (with --engine ray); default: local")
    ] = None,
) -> None:
    """Run a recipe and publish the next version of its dataset (only what is new since the last run)."""
    _configure_logging(log_level)
    loaded = _load(recipe)
    if engine is not None and engine not in ("local", "ray"):
        console.print(
            f"[red]usage error[/red] --engine must be local or ray, not {escape(repr(engine))}", highlight=False
        )
        raise typer.Exit(EXIT_USAGE)
    overrides = {"engine": engine, "ray_address": address}
    loaded = loaded.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    if engine == "ray" and (problem := ray_missing()):
        console.print(f"[red]usage error[/red] --engine ray: {escape(problem)}", highlight=False)
        raise typer.Exit(EXIT_USAGE)
    if address is not None and loaded.engine != "ray":
        console.print("[red]usage error[/red] --address names a Ray cluster: use it with --engine ray", highlight=False)
        raise typer.Exit(EXIT_USAGE)
    raise typer.Exit(execute(loaded, quiet, full_refresh, origin=recipe))


@app.command()
@stopped_before_reading()  # nothing it does publishes
def check(
    recipe: Annotated[Path, typer.Argument(help="the recipe YAML")],
    head_files: Annotated[
        int, typer.Option("--head-files", min=0, help="how many files of each source to open and read the head of")
    ] = HEAD_FILES,
    log_level: LogLevel = "warning",
) -> None:
    """Validate a recipe and list what it would read, without running it; read the head of its first
    input files as a run reads them."""
    from connectors.state import safe_url
    from curation.pipeline import (
        build_sources,
        build_stages,
        columns_on_trial,
        recipe_warnings,
        source_inputs,
        templates_on_trial,
        version_a_run_extends,
    )
    from curation.published import published_versions, read_manifest, refuse_unwritable_dest, version_uri
    from curation.stages.base import StageError, raised_where
    from curation.state import StateFolderError, sqlite_folder_problem

    _configure_logging(log_level)  # what the readers warn of (a CSV header that is not UTF-8), as in a run
    loaded = _load(recipe)
    # What check is reading, and the exit code for an error no handler below expects there.
    reading = [(str(recipe), EXIT_USAGE)]
    try:
        sources = build_sources(loaded)
        reading.append(("the sources' listings", EXIT_USAGE))  # storage that cannot be reached: not the recipe's
        inputs = source_inputs(sources)
        results = {}  # a database's result: reachable, its table or query runs; its columns
        for source in sources:
            if hasattr(source, "probe"):
                reading.append((source.uri, EXIT_USAGE))
                results[source.uri] = source.probe()
        reading.append((str(recipe), EXIT_USAGE))
        lacking, lacking_warnings = _lacking_columns(loaded, results)
        # Building the stages reads the state store: the review decisions, the dedup index.
        reading.append((f"the stages (state store {safe_url(loaded.state)})", EXIT_FAILED))
        built = build_stages(loaded)
        if (problem := sqlite_folder_problem(loaded.state)) is not None:  # as the run's first write would find
            raise StateFolderError(problem)
        stages = [stage.name for stage in built]
        problems, notes, templates_failed, columns_missing = _read_heads(sources, built, head_files, reading)
        problems = lacking + problems
        reading.append((loaded.output.dest, EXIT_USAGE))
        previous = published_versions(loaded.output.dest, loaded.dataset)  # a dest the run cannot list (no bucket)
        refuse_unwritable_dest(loaded.output.dest, loaded.dataset)  # a run with anything new to publish fails there
        if templates_failed or columns_missing:
            # As a run judges them, against the version it extends: none where no source was read before.
            dest, dataset = loaded.output.dest, loaded.dataset
            extends, untried = version_a_run_extends(loaded, previous)
            latest = read_manifest(version_uri(dest, dataset, extends)) if extends is not None else None
            quarantines = "a run quarantines them as the rows' fault"
            if latest is None or templates_on_trial(loaded, latest):
                problems += [f"{failed}: fix the template" for failed in templates_failed]
            else:
                notes += [
                    f"{failed}; v{latest.version} was made with these templates: {quarantines}"
                    for failed in templates_failed
                ]
            if latest is not None and not columns_on_trial(loaded, latest):
                # A source no version read names its columns for the first time: on trial, as the run judges it.
                made = [missing for number, missing in columns_missing if number not in untried]
                problems = [problem for problem in problems if problem not in made]
                notes += [
                    f"{missing}; v{latest.version} was made naming these columns: {quarantines}" for missing in made
                ]
    except SQLAlchemyError as error:
        console.print(f"[red]state store error[/red] {escape(state_problem(loaded.state, error))}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    except (OSError, ValueError) as error:
        place = stage_place(recipe, loaded, str(error)) if isinstance(error, RecipeError) else None
        said = f"{place}: {error}" if place else str(error)
        # An input or dest that cannot be reached (a database, an S3 endpoint, no credentials) is no error in
        # the recipe: its message names it.
        what = reading[-1][0]
        if isinstance(error, RecipeError) or what == str(recipe):
            console.print(f"[red]recipe error[/red] {escape(str(recipe))}: {escape(said)}", highlight=False)
        else:
            label = "output error" if what == loaded.output.dest else "input error"
            console.print(f"[red]{label}[/red] {escape(said)}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    except StageError as error:  # a stage that cannot go on with the head's records: as a run names it
        console.print(f"[red]stage error[/red] {escape(_in_recipe(recipe, loaded, str(error)))}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    except Exception as error:  # of no kind a reader is known to raise (a pyarrow one, a bug): one line all the same
        where, code = reading[-1]
        logging.getLogger(__name__).debug("check stopped reading %s", where, exc_info=True)  # the bug's traceback
        console.print(
            # Not its message: it can quote a row's value (a KeyError holds the key it missed).
            f"[red]error[/red] {escape(where)}: {escape(raised_where(error))}; its message is withheld: it can "
            "quote a value" + ("" if log_level.lower() == "debug" else " (--log-level debug shows it)"),
            highlight=False,
        )
        raise typer.Exit(code) from None
    verdict = "[red]input errors[/red]" if problems else "[green]ok[/green]"
    out.print(
        f"{verdict} {escape(str(recipe))}: dataset {loaded.dataset}, {len(inputs)} input(s), "
        f"stages: {' → '.join(stages)}",
        soft_wrap=True,
    )
    for entry in inputs[:SHOWN_INPUTS]:
        size = f"{entry.size:,} bytes" if entry.size is not None else "size unknown"
        out.print(f"  {escape(entry.uri)} ({size})", highlight=False, soft_wrap=True)  # whole, to copy or grep
    if len(inputs) > SHOWN_INPUTS:
        out.print(f"  ... and {len(inputs) - SHOWN_INPUTS:,} more", highlight=False)
    out.print(f"publishes {loaded.output.format} to {escape(loaded.output.dest)}", highlight=False, soft_wrap=True)
    for warning in [*lacking_warnings, *recipe_warnings(loaded)]:
        console.print(f"[yellow]warning[/yellow] {escape(warning)}", highlight=False)
    for note in notes:
        out.print(f"  {escape(note)}", highlight=False, soft_wrap=True)
    if problems:
        for problem in problems:
            console.print(f"[red]input error[/red] {escape(problem)}", highlight=False)
        raise typer.Exit(EXIT_USAGE)


SHOWN_INPUTS = 20


def _read_heads(
    sources: list, stages: list, files: int, reading: list[tuple[str, int]]
) -> tuple[list[str], list[str], list[str], list[tuple[int, str]]]:
    """Read the head of the first ``files`` files of each files, images (its sidecar) or hf source as a run
    reads them (an hf data file's first batch), and shape its rows as the run does: what would fail the
    run (a file it refuses, by the reader's own message); notes:
    other records the head would set aside (the run quarantines them), files not opened; each file
    whose every head record failed one template one way (the run's error only where ``templates_on_trial``);
    and each file whose head lacks a column the recipe names, by its source's number and the first such record's
    line, among the problems too (the run's error only where ``columns_on_trial`` or its source is new to the
    dataset: a file lacking it beside those having it is likely a bad export).
    Each file is added to ``reading`` as it is opened."""
    from connectors.files import HEAD_BYTES, FilesSourceReader, unread_partition
    from connectors.hf import HeadNotRead, HFSourceReader
    from connectors.images import ImagesSourceReader
    from connectors.storage import StorageError
    from curation.pipeline import set_aside_scrub
    from curation.stages.base import StageSettingError
    from curation.stages.shape import Shape, TemplateErrors, recipe_template_error

    shaping: list = []
    for stage in stages:  # those before the record exists: a column the recipe names is looked for
        shaping.append(stage)
        if stage.name == "shape":
            break
    # With a PII stage, a set-aside row's detail is redacted as the run publishes it (a reader's message
    # can quote what it could not parse: a key named twice).
    scrub = set_aside_scrub(stages)
    problems: list[str] = []
    notes: list[str] = []
    templates_failed: list[str] = []
    columns_missing: list[tuple[int, str]] = []
    for number, source in enumerate(sources):
        # An images source's sidecar files are read as a files source's (the images are left to the run).
        if not isinstance(source, FilesSourceReader | ImagesSourceReader | HFSourceReader):
            continue
        entries = source.entries()
        for entry in entries[:files]:
            reading.append((entry.uri, EXIT_USAGE))
            try:
                batch = source.head(entry)
            except StorageError as error:
                problems.append(str(error))
                continue
            except HeadNotRead as error:
                notes.append(str(error))
                continue
            rows, set_aside = batch.rows, [batch.set_aside]
            # The first record failing a template as every record shaped did: the run fails on it
            # (``recipe_template_error``), and says it, not a record of those lacking a value.
            template_error: TemplateErrors | None = None
            for stage in shaping:
                if not rows.num_rows:
                    break
                result = stage(rows)
                if stage.name == Shape.name:
                    aside, errors = result.set_aside, TemplateErrors().add(result.set_aside)
                    if recipe_template_error(errors, aside.num_rows, rows.num_rows) is not None:
                        template_error = errors
                rows = result.kept
                set_aside.append(result.set_aside)
            for stage in stages:  # a setting the records' values cannot satisfy (between on a column of text)
                if rows.num_rows and hasattr(stage, "check_columns"):
                    try:
                        stage.check_columns(rows)
                    except StageSettingError as error:  # a column's type is its file's: which the head read
                        raise StageSettingError(f"{error} (the first records of {entry.uri})") from None
            tables = [scrub(table) if scrub and table.num_rows else table for table in set_aside]
            reasons = [(row["reason"], row["detail"]) for table in tables for row in table.to_pylist()]
            missing = [detail for reason, detail in reasons if reason == "missing_column"]
            failed = [detail for reason, detail in reasons if reason == "template"]
            if missing:
                more = f" (and {len(missing) - 1:,} more of the first records)" if len(missing) > 1 else ""
                problems.append(f"{missing[0]}{more}{unread_partition(source.config, entry.uri, missing[0])}")
                columns_missing.append((number, problems[-1]))  # in file order; dropped where the run quarantines it
            elif template_error is not None:
                example = template_error.example_as_published(scrub)
                templates_failed.append(f"{example}; so on all {len(failed):,} record(s) of the head")
            elif reasons:
                notes.append(
                    f"{len(reasons):,} of the first records of {entry.uri} would be set aside, for example {reasons[0][1]}"
                )
        if len(entries) > files:
            read_from = getattr(source.config, "sidecar", source.config.path)  # an images source: its sidecar
            # An hf source's head is its first batch (``batch_rows`` rows at most), not a number of bytes.
            head = "first batch" if isinstance(source, HFSourceReader) else f"head ({HEAD_BYTES // 1024:,} KiB)"
            notes.append(
                f"read the {head} of the first {files:,} file(s) of {read_from}; "
                f"{len(entries) - files:,} not opened (--head-files)"
                if files
                else f"opened none of the {len(entries):,} file(s) of {read_from} (--head-files 0)"
            )
    return problems, notes, templates_failed, columns_missing


def _lacking_columns(recipe: Recipe, results: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """Each column a SQL source's result lacks that the recipe needs (a record field's column, one a
    template uses, a required ``input_schema`` column): every row of it would be set aside, and a run of
    no other source fails only once it has read them all. And, as warnings, each a template reads only
    under a condition (``{% if x %}{{ y }}{% endif %}``): the run quarantines only the rows meeting it."""
    import jinja2
    from jinja2 import nodes

    from curation.stages.shape import Shape
    from schemas.records import input_name

    shape = Shape(recipe.record, carry=recipe.carry_columns())
    schema = recipe.input_schema
    required = schema.required_columns() if schema is not None else []
    problems: list[str] = []
    warnings: list[str] = []
    for uri, names in results.items():
        held = {input_name(name) for name in names}  # as the connector reads them
        has = f"; the result has {', '.join(map(repr, sorted(held)))}"
        problems += [f"{uri}: required column {name!r} is missing{has}" for name in required if name not in held]
        for field in shape.fields:
            if field.column is not None and field.target in shape.required and field.column not in held:
                problems.append(f"{uri}: {field.target}: column {field.column!r} is missing{has}")
            if not field.template_columns - held:
                continue
            # A name the template asks about (`x is defined`, `x | default(...)`) is one it can do without.
            tree = jinja2.Environment().parse(field.spec)
            asked = {
                node.node.name
                for node in [*tree.find_all(nodes.Test), *tree.find_all(nodes.Filter)]
                if node.name in ("defined", "undefined", "default", "d") and isinstance(node.node, nodes.Name)
            }
            always = _always_read(tree)
            for name in sorted(field.template_columns - held - asked):
                if name in always:
                    problems.append(f"{uri}: {field.target}: column {name!r} is missing (the template uses it){has}")
                else:
                    warnings.append(
                        f"{uri}: {field.target}: column {name!r} is missing; the template uses it only under a "
                        f"condition: a record meeting it is quarantined{has}"
                    )
        problems += [
            f"{uri}: column {c!r} is missing ({by} names it){has}" for c, by in shape.carry.items() if c not in held
        ]
    return problems, warnings


def _always_read(node: TemplateNode) -> set[str]:
    """The names a template reads whatever a row holds: not those read only in a branch (``{% if %}``,
    ``a if b else c``, the right of ``and``/``or``), a loop's body or a macro's."""
    from jinja2 import nodes

    branches = (
        (nodes.If, {"body", "elif_", "else_"}),
        (nodes.CondExpr, {"expr1", "expr2"}),
        (nodes.And, {"right"}),
        (nodes.Or, {"right"}),
        (nodes.For, {"body", "else_", "test"}),
        (nodes.Macro, {"body"}),
        (nodes.CallBlock, {"body"}),
    )
    names = {node.name} if isinstance(node, nodes.Name) and node.ctx == "load" else set()
    skipped = next((fields for kind, fields in branches if isinstance(node, kind)), set())
    for name, value in node.iter_fields():
        for child in [] if name in skipped else value if isinstance(value, list) else [value]:
            if isinstance(child, nodes.Node):
                names |= _always_read(child)
    return names


def state_problem(url: str, error: SQLAlchemyError) -> str:
    """The state store's URL (password hidden) and the driver's own first line of the error."""
    from connectors.state import safe_url

    reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    return f"{safe_url(url)}: {reason}"


@app.command()
@stopped_before_reading()  # nothing published before execute, which says its own stops
def demo(
    folder: Annotated[Path, typer.Option(help="where the demo writes its input, recipe and output")] = Path(
        "demo-output"
    ),
    rows: Annotated[int, typer.Option(min=10, help="how many transactions to generate")] = 5000,
    log_level: LogLevel = "warning",
) -> None:
    """Generate synthetic bank transactions and curate them into instructions; each run starts over (full refresh)."""
    from curation.demo import write_demo

    _configure_logging(log_level)
    try:
        recipe_path = write_demo(folder, rows)
    except OSError as error:  # a file where the folder goes, no permission, a full disk
        said = f"{error.filename}: {error.strerror}" if error.filename and error.strerror else str(error)
        console.print(
            f"[red]error[/red] --folder {escape(str(folder))}: cannot write the demo ({escape(said)})", highlight=False
        )
        raise typer.Exit(EXIT_USAGE) from None
    out.print(
        f"demo input and recipe in [bold]{escape(str(folder))}[/bold]; running {escape(str(recipe_path))}",
        highlight=False,
    )
    raise typer.Exit(
        execute(_load(recipe_path), full_refresh=True, origin=recipe_path)
    )  # the demo starts over each time


app.add_typer(train_app, name="train")
app.add_typer(review_app, name="review")


if __name__ == "__main__":
    app()
