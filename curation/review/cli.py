"""``curation review``: serve the review page, manage its users, move the queue to and from Label Studio."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from schemas.config import Recipe

if TYPE_CHECKING:
    import sqlalchemy as sa

review_app = typer.Typer(help="The annotators' review page and its queue.", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)  # messages whole: a log line keeps its file name in one piece
DEFAULT_STATE_URL = "sqlite:///.curation/state.db"
PASSWORD_ENV = "CURATION_REVIEW_PASSWORD"

StateOption = Annotated[
    str | None, typer.Option("--state", help="state store URL (default: the first recipe's, else .curation/state.db)")
]
RecipeOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--recipe",
        help="a recipe: the first one's state store is used (unless --state), and the page shows each one's "
        "dataset; repeatable",
    ),
]


def _say(label: str, message: str) -> None:
    """Print ``message`` after ``label`` (markup): the message is text, as it can quote a user's value
    or a file's, whose brackets rich would otherwise take for markup (``[/x]`` an error, ``[b]`` lost)."""
    console.print(f"{label} {escape(message)}", highlight=False)


def _recipes(paths: list[Path] | None) -> list[Recipe]:
    from schemas.config import RecipeError, load_recipe

    recipes = []
    for path in paths or []:
        try:
            recipes.append(load_recipe(path, reads_sources=False))  # the state store's, not the sources
        except RecipeError as error:
            _say("[red]recipe error[/red]", str(error))
            raise typer.Exit(2) from None
    return recipes


def _state_url(state: str | None, recipes: list[Recipe]) -> str:
    """The state store to use: one named by --state or the default must exist already (made here, it
    would be a new, empty store: the queue empty and decisions lost); a recipe's is made with it."""
    import sqlalchemy as sa

    from curation.state import sqlite_file

    if recipes and not state:
        return recipes[0].state
    url = state or DEFAULT_STATE_URL
    try:
        sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        _say(
            "[red]error[/red]", f"--state {url}: not a database URL (sqlite:///path/state.db, postgresql+psycopg://...)"
        )
        raise typer.Exit(2) from None
    path = sqlite_file(url)
    if path is not None and not path.exists():
        where = f"at {path}" + ("" if state else " (from this folder)")
        _say(
            "[red]no state store[/red]",
            f"{where}: pass --recipe RECIPE to use its state store, or --state URL of an existing one",
        )
        raise typer.Exit(2)
    return url


def _store_name(url: str, state: str | None, recipes: list[Recipe]) -> str:
    """The state store a command used, its password (and a secret in its query) hidden, and where the
    choice came from."""
    from connectors.state import safe_url

    shown = safe_url(url)
    if state:
        return shown
    return f"{shown} (the recipe's)" if recipes else f"{shown} (the default, from this folder)"


def _engine(url: str):
    from curation.state import StateStore

    return StateStore(url).engine


@contextlib.contextmanager
def _state_store(url: str) -> Iterator[None]:
    """A state store that cannot be reached or read (a server down, a file that is no SQLite database)
    is said in one line with its URL, the password hidden, as a run says it (exit 1): not a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as error:
        from curation.cli import state_problem

        _say("[red]state store error[/red]", state_problem(url, error))
        raise typer.Exit(1) from None


@review_app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on; loopback unless you put TLS in front")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    state: StateOption = None,
    recipe: RecipeOption = None,
    proxy: Annotated[
        str | None,
        typer.Option(help="address of the TLS proxy in front: its X-Forwarded-For names each client"),
    ] = None,
    trust_any_proxy: Annotated[
        bool,
        typer.Option(
            help="let --proxy '*' trust every client's X-Forwarded-For (only when the proxy alone can connect)"
        ),
    ] = False,
) -> None:
    """Serve the review page (sign in with a user made by `curation review add-user`)."""
    import uvicorn

    from curation.review.app import create_app

    unread = _not_addresses(proxy) if proxy else []
    if unread:
        # uvicorn keeps such an entry as a literal that no client's address equals: the proxy would not be
        # trusted, and every client behind it counted as the proxy's one address, with no word said.
        _say(
            "[red]error[/red]",
            f"--proxy {proxy}: {', '.join(repr(e) for e in unread)} is not an IP address or "
            "network (such as 10.0.0.5 or 10.0.0.0/24; a host name is not looked up)",
        )
        raise typer.Exit(2)
    if proxy and _trusts_anyone(proxy):
        # The sign-in limit per address keys on the forwarded address: trusted from anyone, a client
        # names a new address with each guess.
        said = f"--proxy {proxy} trusts every client's X-Forwarded-For, so any client can claim any address"
        if not trust_any_proxy:
            _say(
                "[red]error[/red]",
                f"{said}: name the proxy's address or network, or pass --trust-any-proxy "
                "if nothing but the proxy can reach this port",
            )
            raise typer.Exit(2)
        _say(
            "[yellow]warning[/yellow]",
            f"{said}: the failed sign-ins per address are only limited if nothing but the proxy can reach this port",
        )
    recipes = _recipes(recipe)
    if host not in ("127.0.0.1", "localhost", "::1"):
        # Session cookies are Secure: off loopback, browsers send them only over HTTPS.
        _say("[yellow]warning[/yellow]", f"listening on {host}: serve it behind HTTPS (a TLS proxy)")
    url = _state_url(state, recipes)
    with _state_store(url):
        app = create_app(url, recipes)
    busy = _cannot_listen(host, port)
    if busy:  # else uvicorn says it after the page's address, as its own ERROR line, and exits 3
        _say("[red]error[/red]", busy)
        raise typer.Exit(2)
    console.print(f"review page on http://{host}:{port}/", highlight=False, markup=False)
    # Failed sign-ins are counted per client address: behind a proxy that is the forwarded one, and
    # only the named proxy may say so (any other client could claim any address).
    forwarded = {"proxy_headers": True, "forwarded_allow_ips": proxy} if proxy else {"proxy_headers": False}
    uvicorn.run(app, host=host, port=port, log_level="warning", **forwarded)


def _cannot_listen(host: str, port: int) -> str | None:
    """Why the page cannot listen on ``host``:``port`` (another process has the port, or it is under
    1024 and this user may not take it), tried as uvicorn binds: each address ``host`` names. An address
    no interface has is left to uvicorn, which skips it as asyncio does (IPv6 turned off, for localhost)."""
    import errno
    import socket

    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return None  # uvicorn names the host it cannot look up
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's: a port in TIME_WAIT is free
            if family == socket.AF_INET6:
                # As asyncio binds uvicorn's: '::' alone, not IPv4 too, which another process may hold.
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return f"port {port} on {host} is taken by another process: stop it, or pass another --port"
                if error.errno == errno.EACCES:  # a port under 1024, without the privilege
                    return f"cannot listen on port {port} of {host}: {error.strerror}: pass another --port"
    return None


def _not_addresses(proxy: str) -> list[str]:
    """The entries of ``proxy`` (comma-separated) that are neither ``*`` nor an IP address or network."""
    import ipaddress

    wrong = []
    for entry in (part.strip() for part in proxy.split(",")):
        try:
            if entry and entry != "*":
                ipaddress.ip_network(entry, strict=False)  # an address is a network of one
        except ValueError:
            wrong.append(entry)
    return wrong


def _trusts_anyone(proxy: str) -> bool:
    """Whether uvicorn's ``forwarded_allow_ips`` of ``proxy`` takes any client for the proxy: ``*``, or
    networks that together hold every address of IPv4 or IPv6 (0.0.0.0/0; 0.0.0.0/1 with 128.0.0.0/1)."""
    import ipaddress

    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in (part.strip() for part in proxy.split(",")):
        if entry == "*":
            return True
        with contextlib.suppress(ValueError):
            if "/" in entry:
                networks.append(ipaddress.ip_network(entry))
    return any(
        merged.prefixlen == 0
        for version in (4, 6)
        for merged in ipaddress.collapse_addresses(n for n in networks if n.version == version)
    )


@review_app.command("add-user")
def add_user(
    name: Annotated[str, typer.Argument(help="the name the user signs in with")],
    role: Annotated[str, typer.Option(help="reviewer, pii-reviewer or admin")] = "reviewer",
    state: StateOption = None,
    recipe: RecipeOption = None,
) -> None:
    """Create a user (or reset one's role and password); the password comes from $CURATION_REVIEW_PASSWORD or a prompt."""
    from curation.review.auth import AuthError
    from curation.review.auth import add_user as create

    url = _state_url(state, _recipes(recipe))  # before the prompt: a wrong store is said at once
    password = os.environ.get(PASSWORD_ENV)
    if password == "":  # a variable meant to hold it, left empty: no prompt to fall back on unasked
        _say(
            "[red]error[/red]",
            f"${PASSWORD_ENV} is set but empty, so no user made: set it to the password, or unset it",
        )
        raise typer.Exit(2)
    if password is None:
        # A closed stdin (``0<&-``, a daemon's) is None: no terminal, and no line piped on it.
        password = _typed_password() if sys.stdin is not None and sys.stdin.isatty() else _piped_password()
    try:
        with _state_store(url):
            user = create(_engine(url), name, role, password)
    except AuthError as error:
        _say("[red]error[/red]", str(error))
        raise typer.Exit(2) from None
    article = "an" if user.role[0] in "aeiou" else "a"
    console.print(f"user [bold]{escape(user.name)}[/bold] is {article} {user.role}", highlight=False)


def _typed_password() -> str:
    """The password typed at the terminal, twice."""
    try:
        return typer.prompt("password", hide_input=True, confirmation_prompt=True)
    except typer.Abort:  # its input ended or ^C: else a bare "Aborted.", exit 1
        _say(
            "[red]error[/red]",
            f"no password given, so no user made: set ${PASSWORD_ENV}, or type it at the prompt (twice)",
        )
        raise typer.Exit(2) from None


def _piped_password() -> str:
    """The first line of stdin, piped by a script (``printf 'pass\\n' | curation review add-user ann``): not
    getpass's fallback to it, which warns that the password may be echoed, and reads none from an empty stdin
    (cron, CI) without saying how to give one."""
    try:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r") if sys.stdin is not None else ""
    except UnicodeDecodeError:
        _say("[red]error[/red]", "the password piped on stdin is not UTF-8 text, so no user made")
        raise typer.Exit(2) from None
    if not password:
        _say(
            "[red]error[/red]",
            "no password given, so no user made: nothing on stdin (not a terminal) to read it from; "
            f"pipe it in or set ${PASSWORD_ENV}",
        )
        raise typer.Exit(2)
    return password


@review_app.command("export")
def export(
    out: Annotated[Path, typer.Argument(help="where to write the Label Studio tasks (JSON)")],
    dataset: Annotated[str | None, typer.Option(help="only this dataset")] = None,
    version: Annotated[int | None, typer.Option(help="only this version")] = None,
    kind: Annotated[str | None, typer.Option(help="only this kind: pii, near_duplicate, quarantined, vqa")] = None,
    status: Annotated[str | None, typer.Option(help="only this status, e.g. open")] = None,
    include_pii: Annotated[bool, typer.Option(help="export raw PII text and spans (default: redacted)")] = False,
    state: StateOption = None,
    recipe: RecipeOption = None,
) -> None:
    """Write the queue as Label Studio tasks; with --kind, also the matching labeling config next to it."""
    from curation.review.labelstudio import export_tasks, label_config
    from curation.review.queue import KINDS, STATUSES
    from schemas.pii import PiiConfig

    for option, value, known in (("kind", kind, KINDS), ("status", status, STATUSES)):
        if value is not None and value not in known:
            _say("[red]error[/red]", f"--{option} {value}: use one of {', '.join(known)}")
            raise typer.Exit(2)
    if out.suffix.lower() == ".xml":  # the labeling config is written beside the tasks, as OUT.xml
        _say(
            "[red]error[/red]",
            f"{out}: the tasks are JSON, and the labeling config is written beside them with "
            "the suffix .xml: name the tasks file tasks.json, say",
        )
        raise typer.Exit(2)
    recipes = _recipes(recipe)
    url = _state_url(state, recipes)
    filters = {"dataset": dataset, "version": version, "kind": kind, "status": status}
    with _state_store(url):
        engine = _engine(url)
        tasks = export_tasks(engine, filters, include_pii)
        unqueued = None if tasks else _not_queued(engine, dataset, version)
    if unqueued:
        _say("[yellow]warning[/yellow]", f"the queue holds no item of {unqueued}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(tasks, indent=2, ensure_ascii=False))
    except OSError as error:
        _say("[red]error[/red]", f"{out}: cannot write the tasks ({error.strerror or error})")
        raise typer.Exit(2) from None
    entities = [
        entity
        for r in recipes
        for stage in r.stages
        if isinstance(stage, PiiConfig)
        for entity in stage.scanned_entities()
    ]
    config = label_config(kind, tasks, entities) if kind else None
    if config is not None:
        try:
            out.with_suffix(".xml").write_text(config)
        except OSError as error:
            _say(
                "[red]error[/red]",
                f"{out.with_suffix('.xml')}: cannot write the labeling config "
                f"({error.strerror or error}); the {len(tasks)} task(s) were written to {out}",
            )
            raise typer.Exit(2) from None
    console.print(
        f"{len(tasks)} task(s) written to {out}, from {_store_name(url, state, recipes)}", highlight=False, markup=False
    )
    gone = sum(task["data"]["gone"] for task in tasks)
    if gone:
        console.print(
            f"{gone} of them (data.gone) no longer in the input: a decision on them has no effect "
            "unless the record comes back",
            highlight=False,
        )


def _not_queued(engine: sa.Engine, dataset: str | None, version: int | None) -> str | None:
    """The --dataset or --version the queue holds no item of, as said (a typo, or a version not yet
    run), rather than an export of nothing that looks like a queue with nothing left to review."""
    from curation.review.queue import queued_datasets, queued_versions

    if dataset is not None and dataset not in queued_datasets(engine):
        return f"dataset {dataset!r}"
    if version is not None and version not in queued_versions(engine, dataset):
        return f"version {version}" + (f" of dataset {dataset!r}" if dataset is not None else "")
    return None


# A Label Studio export is read whole (no incremental JSON parser is installed), and its tasks take a
# few times its size in memory: past this, it is refused before it is read.
MAX_EXPORT_BYTES = 256 * 2**20


class ExportTooLarge(ValueError):
    pass


def _export_text(path: Path) -> str:
    """The export's text, read up to ``MAX_EXPORT_BYTES``: a larger file (or an endless one, such as a
    pipe or /dev/zero) is refused without holding more than that."""
    too_large = ExportTooLarge(
        f"over {MAX_EXPORT_BYTES // 2**20} MiB: too large to import at once; export fewer tasks from Label Studio "
        "(a filtered view, or by data.kind) and import each file"
    )
    with path.open("rb") as stream:
        if os.fstat(stream.fileno()).st_size > MAX_EXPORT_BYTES:
            raise too_large
        body = stream.read(MAX_EXPORT_BYTES + 1)
    if len(body) > MAX_EXPORT_BYTES:
        raise too_large
    return body.decode()


@review_app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(help="a Label Studio JSON export of tasks made by `review export`")],
    user: Annotated[str, typer.Option(help="whose decisions these are (recorded with each one)")],
    state: StateOption = None,
    recipe: RecipeOption = None,
) -> None:
    """Take Label Studio annotations as decisions: approve/reject/keep choices, removed PII spans, edited answers."""
    from curation.review.auth import find_user
    from curation.review.decisions import DecisionError
    from curation.review.labelstudio import LabelStudioError, import_annotations

    try:
        tasks = json.loads(_export_text(path))
    except OSError as error:
        _say("[red]error[/red]", f"{path}: cannot read: {error.strerror or error}")
        raise typer.Exit(2) from None
    except ExportTooLarge as error:
        _say("[red]error[/red]", f"{path}: {error}")
        raise typer.Exit(2) from None
    except ValueError as error:  # not JSON, not UTF-8, or an integer over Python's 4300 digits
        _say("[red]error[/red]", f"{path}: not a Label Studio JSON export ({error})")
        raise typer.Exit(2) from None
    except RecursionError:  # Python's JSON reader gives up on lists or objects nested thousands deep
        _say("[red]error[/red]", f"{path}: not a Label Studio JSON export (nested too deeply)")
        raise typer.Exit(2) from None
    if not isinstance(tasks, list):
        _say("[red]error[/red]", f"{path}: expected a JSON list of tasks")
        raise typer.Exit(2)
    recipes = _recipes(recipe)
    url = _state_url(state, recipes)
    with _state_store(url):
        known = find_user(_engine(url), user) is not None
    if not known:
        # Said with the store asked: one made with another --recipe or --state is not this one.
        _say(
            "[red]error[/red]",
            f"no review user {user!r} in the state store {_store_name(url, state, recipes)}: "
            "create one with `curation review add-user`, or pass the --recipe or --state it was made with",
        )
        raise typer.Exit(2)
    try:
        with _state_store(url):
            changed: list[int] = []
            gone: list[int] = []
            disagreeing: list[str] = []
            notes: list[str] = []
            counts = import_annotations(_engine(url), tasks, user, changed, gone, disagreeing, notes)
    except (LabelStudioError, DecisionError) as error:
        _say("[red]error[/red]", f"{path}: {error}")
        raise typer.Exit(2) from None
    console.print(", ".join(f"{count} {action}" for action, count in counts.items()), highlight=False)
    if changed:
        _say(
            "[yellow]warning[/yellow]",
            f"task(s) not taken, their item decided on since they were exported: item(s) "
            f"{', '.join(map(str, changed))}; look at them on the page (or export them again)",
        )
    for note in notes:
        _say("[yellow]warning[/yellow]", note)
    for item in disagreeing:
        _say(
            "[yellow]warning[/yellow]",
            f"not taken, its tasks decide differently: {item}; "
            "settle it in Label Studio and import again, or decide on the page",
        )
    if gone:
        _say(
            "[yellow]warning[/yellow]",
            f"taken, but no longer in the input (no effect unless the record comes "
            f"back): item(s) {', '.join(map(str, gone))}",
        )
