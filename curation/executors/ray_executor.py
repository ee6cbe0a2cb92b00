"""Runs a recipe's stages on Ray Data, with the same contract and accounting as ``LocalExecutor``.

Sources are read in Ray tasks, one per input file where the source lists files, so reading
scales with the cluster. Per-batch stages run as ``map_batches`` over Arrow batches; a segment
that holds a stage with a model (PII) runs on an actor pool, so each worker loads the model once,
not once per batch. A ``DuplicateStage`` runs its global step distributed
(``curation.executors.ray_duplicates``). Each batch travels as an envelope carrying its kept rows
and what the stages set aside, flagged and counted; the writer stays on this driver and consumes
the stream with ``iter_batches``, so the layout, the manifest and the accounting are the
embedded executor's.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import zip_longest
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc

from connectors.base import Source
from connectors.state import ListedFiles
from curation.executors.envelope import (
    CarriedError,
    Letter,
    apply_stages,
    carried,
    carrying_errors,
    collecting_notes,
    is_project_error,
    open_all,
    seal_all,
    taken,
    unpack,
)
from curation.executors.local import Tally, record_set_aside
from curation.stages.base import DuplicateStage, GlobalStage, Stage, StageError, split_by_mask
from curation.stages.dedup_index import SignatureRecorder
from curation.stages.review import ReviewDecisions
from curation.stopping import STOP_SIGNALS
from curation.writer import DatasetWriter
from schemas.config import RecipeError
from schemas.records import FLAG_SCHEMA

log = logging.getLogger("curation.ray")

AnyStage = Stage | GlobalStage
SMALL_CLUSTER_CPUS = 8


class RayUnavailable(RecipeError):
    """``engine: ray`` was asked for but Ray Data cannot be imported (Ray without its data extra, found by
    a recipe's check, which does not import it): a recipe that cannot run here, exit 2."""


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise RayUnavailable(
            "engine 'ray' needs Ray Data: install the ray extra (pip install 'curation[ray]')"
        ) from None
    return ray


def code_root() -> str:
    """The folder that holds this checkout's packages, so local workers import the driver's code."""
    return str(Path(__file__).resolve().parents[2])


def loads_model(stage: AnyStage) -> bool:
    """A stage with a model to load (PII) says so, or lives in the PII module."""
    return bool(getattr(stage, "loads_model", False)) or type(stage).__module__.startswith("curation.stages.pii")


def check_shippable(stages: list[AnyStage]) -> None:
    """Stages travel to the workers pickled; say which one cannot, before any work starts."""
    import cloudpickle

    for stage in stages:
        try:
            cloudpickle.dumps(stage)
        except Exception as error:
            raise StageError(
                f"stage {stage.name} cannot be sent to Ray workers ({type(error).__name__}: {error}); "
                "load models lazily on first use, or give the stage a __reduce__ that rebuilds it from its settings"
            ) from None


def split_sources(sources: list[Source]) -> list[Source]:
    """One read task per input file where the source lists files; other sources read whole."""
    parts: list[Source] = []
    for source in sources:
        if isinstance(source, ListedFiles):
            parts += [source.limited_to([entry]) for entry in source.entries()]
        else:
            parts.append(source)
    return parts


def read_sources(tasks: pa.Table, sources: list[Source]) -> Iterator[pa.Table]:
    """A read task: the batches of the sources it is given, as envelopes (with the warnings the
    readers gave, for the driver to log)."""
    with collecting_notes() as notes:
        for index in tasks["task"].to_pylist():
            yield from _read_source(index, sources[index], notes)
            if notes:  # said after its last batch (a SQL source's rows with no cursor value)
                yield seal_all([Letter(rows=pa.table({}), notes=taken(notes))])


def _read_source(index: int, source: Source, notes: list[list[Any]]) -> Iterator[pa.Table]:
    watermark = getattr(source, "watermark", None)
    # What the source took before reading (the driver's listing, shared by every task; what the parts of its
    # source this task read before took, sharing this watermark): not sent back, the driver has it already.
    listed = dict(watermark.pending) if watermark is not None else {}
    unread = dict(watermark.unread_inputs) if watermark is not None else {}
    batches = iter(source.batches())
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except Exception as error:
            if not is_project_error(error):
                raise
            yield seal_all([Letter(rows=pa.table({}), error=error, notes=taken(notes))])
            return
        letter = Letter(
            rows=batch.rows,
            set_aside=[batch.set_aside] if batch.set_aside.num_rows else [],
            input_records=batch.input_records,
            input_bytes=batch.input_bytes,
            notes=taken(notes),
        )
        yield seal_all([letter])
    if watermark is not None:  # this copy's record of what it took while reading, for the driver to commit
        added = {item: value for item, value in watermark.pending.items() if listed.get(item, listed) != value}
        found = Counter(watermark.unread_inputs) - Counter(unread)
        took = {"task": index, "pending": added, "reread": watermark.reread, "unread": dict(found)}
        mark = json.dumps({**took, "replaced": sorted(watermark.replaced)})
        yield seal_all([Letter(rows=pa.table({}), watermark=mark, notes=taken(notes))])


def run_segment(envelopes: pa.Table, stages: list[Stage]) -> pa.Table:
    # A letter holding an error goes on to the driver as it is, to be raised there.
    letters = open_all(envelopes)

    def run() -> pa.Table:
        done = []
        with collecting_notes() as notes:
            for letter in letters:
                letter = letter if letter.error else apply_stages(letter, stages)
                letter.notes += taken(notes)
                done.append(letter)
        return seal_all(done)

    return carrying_errors(run)


def holding_content(envelopes: pa.Table, review: ReviewDecisions, keys: pa.Array) -> pa.Table:
    """Per envelope, the kept rows (ids) holding one of the content ``keys``, and the key each holds: a
    record with an edit in force is judged by its own decisions, as the review stage judges it."""
    from curation.review.rejected_content import content_keys

    def run() -> pa.Table:
        ids, held = [], []
        for letter in open_all(envelopes):
            rows = letter.rows
            found = pa.table({"id": pa.array([], pa.string()), "key": pa.array([], pa.uint64())})
            if rows.num_rows:
                found = pa.table({"id": rows["id"], "key": content_keys(rows, review.kind)})
                own = pc.is_in(found["id"], value_set=review.edited_ids)
                found = found.filter(pc.and_(pc.is_in(found["key"], value_set=keys), pc.invert(own)))
            ids.append(found["id"].to_pylist())
            held.append(found["key"].to_pylist())
        return pa.table({"ids": pa.array(ids, pa.list_(pa.string())), "keys": pa.array(held, pa.list_(pa.uint64()))})

    return carried(run)()


def renamed(review: ReviewDecisions, set_aside: pa.Table, named: dict[str, str]) -> pa.Table:
    """``set_aside``, what one step set aside, with each copy the review stage filtered for holding the
    content of a rejected record in ``named`` naming the record given there instead."""
    if not named or not set_aside.num_rows or not pc.all(pc.equal(set_aside["stage"], review.name)).as_py():
        return set_aside
    copies = pc.invert(pc.is_in(set_aside["id"], value_set=review.rejected)).to_pylist()  # not rejected itself
    originals = set_aside["duplicate_of"].to_pylist()
    changed = [
        named.get(original, original) if copy else original for original, copy in zip(originals, copies, strict=True)
    ]
    return set_aside if changed == originals else review.set_aside(set_aside, changed)


def set_aside_copies(envelopes: pa.Table, review: ReviewDecisions, copies: dict[str, str]) -> pa.Table:
    """The envelopes' kept rows less the ``copies`` (copy id -> rejected record), which the review stage
    sets aside; the envelopes' side outputs were already handed over, and are not sent again."""

    ids = pa.array(list(copies), pa.string())

    def run() -> pa.Table:
        letters = []
        for data in envelopes["rows"].to_pylist():
            letter = Letter(rows=unpack(data))
            if letter.rows.num_rows:
                kept, aside = split_by_mask(letter.rows, pc.invert(pc.is_in(letter.rows["id"], value_set=ids)))
                if aside.num_rows:
                    letter.rows = kept
                    originals = [copies[copy] for copy in aside["id"].to_pylist()]
                    letter.add_step(review.set_aside(aside, originals), FLAG_SCHEMA.empty_table())
                    letter.stats[review.name] = Counter({"rejected_content": aside.num_rows})
            letters.append(letter)
        return seal_all(letters)

    return carrying_errors(run)


class SegmentActor:
    """A segment on an actor: its stages are unpickled (and load their models) once per worker."""

    def __init__(self, stages: list[Stage]) -> None:
        self.stages = stages

    def __call__(self, envelopes: pa.Table) -> pa.Table:
        return run_segment(envelopes, self.stages)


def side_only(envelopes: pa.Table) -> pa.Table:
    """The envelopes without their kept rows: what the driver needs at a barrier."""
    empty = seal_all([Letter(rows=pa.table({}))])["rows"][0]
    return envelopes.set_column(0, "rows", pa.array([empty.as_py()] * envelopes.num_rows, pa.large_binary()))


def unwrap(error: BaseException) -> BaseException | None:
    """The project's own error behind Ray's wrapping (task error, user code error), if any."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        is_wrapper = type(current).__module__.startswith("ray.")
        if not is_wrapper and isinstance(current, CarriedError):  # from a task outside an envelope
            return current.original()
        if not is_wrapper and is_project_error(current):
            return current
        pending += [cause, current.__cause__, current.__context__]
    return None


class ProjectErrorsUnlogged(logging.Filter):
    """Leaves out Ray Data's records about a failed task while the error it handles is a project error."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return error is None or unwrap(error) is None


RAY_CLIENT_PORT = 10001  # where Ray Client listens on a head node: a ray:// address without a port


def _no_cluster(address: str, why: str = "", unknown_host: bool = False) -> ConnectionError:
    # A host that cannot be looked up is most likely a typo: no cluster to start there.
    advice = "check the host name" if unknown_host else "start one with `ray start --head`"
    return ConnectionError(
        f"no Ray cluster answers at --address {address}{why}: {advice}, "
        "or leave out --address to start a local instance"
    )


def _answers(address: str) -> bool:
    """Raises ConnectionError, saying why, where nothing answers at a ``host:port`` or ``ray://host[:port]``
    address: ray.init retries there for minutes before it says so. True where the port answered; ``auto``
    and the other forms are left to ray.init (False)."""
    if address.startswith("ray://"):
        try:
            parts = urlsplit(address)
            host, port = parts.hostname, str(parts.port or RAY_CLIENT_PORT)
        except ValueError:  # a port that is no number: Ray's message says so
            return False
    else:
        host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as error:  # refused, timed out, or a host that cannot be looked up (a typo: no cluster to start)
        reason = error.strerror or str(error)
        raise _no_cluster(address, f" ({reason})" if reason else "", isinstance(error, socket.gaierror)) from None
    return True


def _not_joined(address: str, failed: ConnectionError) -> ConnectionError:
    """Why ray.init could not join the cluster at a ``host:port`` that answers. Ray keeps its last retry's
    error only as the text of its traceback (the cause of the ConnectionError), whose last line names the
    exception's class: a cluster that wants token authentication (Ray 2.60's ``ray start --head`` turns it
    on) raises ``AuthenticationError``. A second connection to find it as an object would wait out the
    GCS client's timeouts again where the port is no Ray's."""
    from ray.exceptions import AuthenticationError

    lines = str(failed.__cause__ or "").strip().splitlines()
    kind, _, reason = (lines[-1] if lines else "").partition(": ")
    if kind == f"{AuthenticationError.__module__}.{AuthenticationError.__qualname__}":
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            return ConnectionError(
                f"the Ray cluster at --address {address} refused this token: give it the one in "
                "~/.ray/auth_token on its head node (that file here, or RAY_AUTH_TOKEN)"
            )
        return ConnectionError(
            f"the Ray cluster at --address {address} wants token authentication: set RAY_AUTH_MODE=token "
            "(its token in ~/.ray/auth_token on the head node, or RAY_AUTH_TOKEN)"
        )
    return ConnectionError(
        f"--address {address} answers on its port, but Ray would not connect ({reason or failed}): "
        "check that it is the head node's GCS port (6379 by default; 10001 for ray://)"
    )


class RayExecutor:
    """Runs the stages on a Ray cluster: a local one by default, or the one at ``address``."""

    def __init__(self, address: str | None = None, workers: int | None = None, quiet: bool = False) -> None:
        self.address = address
        self.workers = workers  # CPUs of a local instance, and the size of a model stage's actor pool
        # ``curation run --quiet``: Ray says only its errors (no notes, no output of its workers).
        self.quiet = quiet
        self._recorders: list[SignatureRecorder] = []  # run on this driver, before the writer
        self._learning: dict[str, Any] = {}  # stages whose ``learned`` the workers' copies add to

    def run(
        self,
        sources: list[Source],
        stages: list[AnyStage],
        writer: DatasetWriter,
        tally: Tally,
        on_input: Callable[[int], None] = lambda _: None,
    ) -> None:
        ray = _ray()
        # ray.init puts its own SIGTERM handler (sys.exit) in place of the run's, which unwinds the run
        # as a failure and says whether it published; the run's handlers go back once connected.
        main = threading.current_thread() is threading.main_thread()
        handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} if main else {}
        try:
            started = self._connect(ray)
        finally:
            self._restore(handlers)
        # Ray Data prints the traceback of a task that failed (at a barrier: the envelopes carry the
        # other errors); a project error is raised below as the embedded executor raises it, its
        # message alone. Ray's console handlers leave those records out; its log file keeps them.
        quiet = ProjectErrorsUnlogged()
        consoles = [h for h in logging.getLogger("ray.data").handlers if isinstance(h, logging.StreamHandler)]
        for console in consoles:
            console.addFilter(quiet)
        try:
            self._run(ray, sources, stages, writer, tally, on_input)
        except Exception as error:
            found = unwrap(error)
            if found is None or found is error:
                raise
            raise found.with_traceback(None) from None  # as it was raised: its attributes too (an OSError's filename)
        finally:
            for console in consoles:
                console.removeFilter(quiet)
            if started:
                ray.shutdown()
                # Ray's shutdown puts SIGTERM's default action back (Python still names the run's handler):
                # a SIGTERM while the run publishes would kill it outright, leaving its staging files and
                # its run unrecorded. Set the run's handlers again.
                self._restore(handlers)

    @staticmethod
    def _restore(handlers: dict[int, Any]) -> None:
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)

    def _connect(self, ray: Any) -> bool:
        if ray.is_initialized():
            return False
        level = logging.ERROR if self.quiet else logging.WARNING
        said: dict[str, Any] = {"logging_level": level, **({"log_to_driver": False} if self.quiet else {})}
        if self.address:
            if self.address.startswith("ray://"):
                # Ray Client from outside the cluster: ship this driver's packages, so the workers run
                # the same code as the driver (inside a cluster, the image or the job's working_dir has it).
                import connectors
                import curation
                import schemas

                said["runtime_env"] = {"py_modules": [curation, schemas, connectors]}
            probed = _answers(self.address)
            try:
                ray.init(address=self.address, **said)
            except ConnectionError as error:  # Ray's text asks for the --address flag the user just passed
                raise (_not_joined(self.address, error) if probed else _no_cluster(self.address)) from None
        elif os.environ.get("RAY_ADDRESS"):  # a job on a cluster (`ray job submit`): that cluster
            ray.init(**said)
        else:
            # "local": a new instance of its own, even where `ray start` left one running (Ray would
            # otherwise join that one, and refuse the CPU count).
            env = {"env_vars": {"PYTHONPATH": code_root()}}
            ray.init(
                address="local",
                num_cpus=self.workers,
                include_dashboard=False,
                runtime_env=env,
                **said,
            )
        return True

    def _run(
        self,
        ray: Any,
        sources: list[Source],
        stages: list[AnyStage],
        writer: DatasetWriter,
        tally: Tally,
        on_input: Callable[[int], None],
    ) -> None:
        # Our progress bar and logs say enough: Ray Data's notes are left out, and its note that its
        # progress bars are off (this run turns them off) too.
        logging.getLogger("ray.data").setLevel(logging.ERROR if self.quiet else logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        # The writer gets the records in input order, as from the embedded executor: a stratified split
        # deals each label's records out in the order they come, and shards hold the same lines (the
        # same checksums). Blocks finished early wait for those before them, which costs some overlap.
        context.execution_options.preserve_order = True
        if ray.cluster_resources().get("CPU", 0) <= SMALL_CLUSTER_CPUS:
            # A sort-based shuffle starts no aggregator actors; Ray's hash shuffle starts one per
            # partition, which costs more than it saves on a few CPUs. Clusters keep Ray's default.
            from ray.data.context import ShuffleStrategy

            context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        # The signature index is written where the writer is, on this driver: from the workers, a state
        # store that is a file (SQLite) would be each node's own, and the signatures lost to later runs.
        self._recorders = [stage for stage in stages if isinstance(stage, SignatureRecorder)]
        # Stages that learn what the run keeps once it publishes (the review stage's content keys of
        # rejected records): their copies in the workers send it back in the envelopes.
        self._learning = {stage.name: stage for stage in stages if isinstance(getattr(stage, "learned", None), dict)}
        stages = [stage for stage in stages if not isinstance(stage, SignatureRecorder)]
        check_shippable(stages)
        parts = split_sources(sources)
        if not parts:
            return
        self._parts = parts  # the driver's sources, whose watermarks the read tasks' records go to
        tasks = ray.data.from_items([{"task": i} for i in range(len(parts))], override_num_blocks=len(parts))
        stream = tasks.map_batches(read_sources, fn_kwargs={"sources": parts}, batch_format="pyarrow", batch_size=1)
        pending: list[Stage] = []
        for stage in stages:
            if isinstance(stage, GlobalStage) and not isinstance(stage, Stage):
                stream = self._segment(stream, pending)
                stream = self._barrier(ray, stream, stage, writer, tally, on_input)
                pending = []
            else:
                pending.append(stage)
                if isinstance(stage, ReviewDecisions) and stage.keys_unknown():
                    stream = self._segment(stream, pending)
                    stream = self._learned_content(stream, stage, writer, tally, on_input)
                    pending = []
        stream = self._segment(stream, pending)
        for envelopes in stream.iter_batches(batch_size=None, batch_format="pyarrow"):
            self._deliver(envelopes, writer, tally, on_input, write_rows=True)

    def _segment(self, stream: Any, stages: list[Stage]) -> Any:
        """Consecutive per-batch stages as one map over the envelopes (on actors if one has a model)."""
        if not stages:
            return stream
        if any(loads_model(stage) for stage in stages):
            size = self.workers or max(1, int(_ray().cluster_resources().get("CPU", 1)) - 1)
            return stream.map_batches(
                SegmentActor,
                fn_constructor_args=(stages,),
                batch_format="pyarrow",
                batch_size=None,
                concurrency=size,
            )
        return stream.map_batches(run_segment, fn_kwargs={"stages": stages}, batch_format="pyarrow", batch_size=None)

    def _barrier(
        self,
        ray: Any,
        stream: Any,
        stage: GlobalStage,
        writer: DatasetWriter,
        tally: Tally,
        on_input: Callable[[int], None],
    ) -> Any:
        """Everything before a global stage is computed once (Ray spills it if it outgrows memory);
        its set-aside rows go to the writer, the global step decides which rows go on."""
        from curation.executors.ray_duplicates import drop_rows, resolve_distributed, review_flags

        carries = stage if hasattr(stage, "with_signatures") else None  # signatures on to the recorder
        if carries is not None:
            from curation.executors.ray_duplicates import attach_signatures

            stream = stream.map_batches(
                attach_signatures, fn_kwargs={"stage": carries}, batch_format="pyarrow", batch_size=None
            )
        done = stream.materialize()
        for envelopes in done.map_batches(side_only, batch_format="pyarrow", batch_size=None).iter_batches(
            batch_size=None, batch_format="pyarrow"
        ):
            self._deliver(envelopes, writer, tally, on_input, write_rows=False)
        if isinstance(stage, DuplicateStage):
            dropped, compared = resolve_distributed(stage, done)
        else:  # a global stage without the duplicate steps: its signatures meet on the driver
            from curation.executors.ray_duplicates import signatures_of

            signatures = done.map_batches(signatures_of, fn_kwargs={"stage": stage}, batch_format="pyarrow")
            dropped, compared = stage.resolve(signatures.iter_batches(batch_size=None, batch_format="pyarrow")), None
        record_set_aside(dropped, writer, tally)
        flags = review_flags(stage, dropped, done, compared)
        if flags is not None and flags.num_rows:
            tally.flags.append(flags)
        log.info("stage=%s set_aside=%d", stage.name, dropped.num_rows)
        drop = pa.array(dropped["id"].to_pylist(), pa.string())
        return done.map_batches(
            drop_rows, fn_kwargs={"drop": drop, "stage": carries}, batch_format="pyarrow", batch_size=None
        )

    def _learned_content(
        self,
        stream: Any,
        review: ReviewDecisions,
        writer: DatasetWriter,
        tally: Tally,
        on_input: Callable[[int], None],
    ) -> Any:
        """The review stage learns the content key of a rejected record it reads whose key was not known
        (never published), and on the embedded executor then filters the copies read after it, from any
        input. Here each task's copy of the stage knows only what that task read: so the stream stops
        after the stage (a barrier), the driver takes each key where it was first learned, in input
        order, and the copies read after that point go as the stage sets them aside."""
        done = stream.materialize()
        first: dict[int, tuple[str, int]] = {}  # content key -> (rejected record, letter it was learned in)
        named: dict[str, str] = {}  # a rejected record learned -> the one its content is first known by
        at = 0

        def learn(letter: Letter) -> None:
            nonlocal at
            for record, key in letter.learned.get(review.name, {}).items():
                named[record] = first.setdefault(key, (record, at))[0]
            # Two rejected records of the same content, read by two tasks: the copies the later one's task
            # filtered name the record the embedded executor names, the first read.
            letter.set_aside = [renamed(review, aside, named) for aside in letter.set_aside]
            at += 1

        for envelopes in done.map_batches(side_only, batch_format="pyarrow", batch_size=None).iter_batches(
            batch_size=None, batch_format="pyarrow"
        ):
            self._deliver(envelopes, writer, tally, on_input, write_rows=False, amend=learn)
        copies: dict[str, str] = {}  # copy's id -> the rejected record whose content it holds
        if first:
            copies = self._copies(done, review, first)
        return done.map_batches(
            set_aside_copies, fn_kwargs={"review": review, "copies": copies}, batch_format="pyarrow", batch_size=None
        )

    @staticmethod
    def _copies(done: Any, review: ReviewDecisions, first: dict[int, tuple[str, int]]) -> dict[str, str]:
        """The kept records holding content ``first`` learned in a letter before their own."""
        keys = pa.array(list(first), pa.uint64())
        found = done.map_batches(
            holding_content, fn_kwargs={"review": review, "keys": keys}, batch_format="pyarrow", batch_size=None
        )
        copies: dict[str, str] = {}
        at = 0
        for block in found.iter_batches(batch_size=None, batch_format="pyarrow"):
            for ids, held in zip(block["ids"].to_pylist(), block["keys"].to_pylist(), strict=True):
                # A key learned in this very letter: the stage filtered its copies there, as it does embedded.
                copies.update((copy, first[key][0]) for copy, key in zip(ids, held, strict=True) if first[key][1] < at)
                at += 1
        return copies

    def _take_watermark(self, taken: dict[str, Any]) -> None:
        watermark = self._parts[taken["task"]].watermark
        watermark.pending.update(taken["pending"])
        watermark.reread |= taken["reread"]
        watermark.replaced.update(taken["replaced"])
        for item, inputs in taken["unread"].items():
            watermark.unread_inputs[item] = watermark.unread_inputs.get(item, 0) + inputs

    def _deliver(
        self,
        envelopes: pa.Table,
        writer: DatasetWriter,
        tally: Tally,
        on_input: Callable[[int], None],
        write_rows: bool,
        amend: Callable[[Letter], None] = lambda _: None,
    ) -> None:
        """Hand one block of envelopes to the tally and the writer, as the embedded executor would
        (each letter first given to ``amend``)."""
        if envelopes.num_rows == 0:
            return
        for letter in open_all(envelopes):
            amend(letter)
            for name, level, message in letter.notes:  # as the worker's logger would have said it here
                logging.getLogger(name).log(level, "%s", message)
            if letter.error is not None:
                raise letter.error
            if letter.watermark is not None:
                self._take_watermark(json.loads(letter.watermark))
            for name, learned in letter.learned.items():
                for item, value in learned.items():
                    self._learning[name].learned.setdefault(item, value)
            tally.input += letter.input_records
            if letter.input_bytes:
                on_input(letter.input_bytes)
            for stage, counts in letter.stats.items():
                tally.add_stats(stage, dict(counts))
            # Step by step (the reader, each stage): what it set aside, then what it flagged.
            for aside, flags in zip_longest(letter.set_aside, letter.flags):
                if aside is not None:
                    record_set_aside(aside, writer, tally)
                if flags is not None and flags.num_rows:
                    tally.flags.append(flags)
            if write_rows and letter.rows.num_rows:
                rows = letter.rows
                for recorder in self._recorders:
                    rows = recorder(rows).kept
                writer.write(rows)
                tally.written += letter.rows.num_rows
                tally.count_inputs(letter.rows)
