"""The annotators' review page: a server-rendered FastAPI app over the state store.

Every page needs a signed-in user; every POST needs the session's CSRF token (form field
``csrf_token`` or header ``X-CSRF-Token``). Session cookies are signed, HttpOnly, SameSite=Lax and
Secure (browsers keep Secure cookies on loopback over plain HTTP, which is where it listens by
default). Launching training is for admins only.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import posixpath
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from itertools import zip_longest
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import anyio
import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi import Path as PathPart
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import Message, Receive

from curation.review import decisions as dec
from curation.review.auth import (
    NOT_PII_REFUSAL,
    SESSION_HOURS,
    SignInLimits,
    User,
    authenticate,
    end_session,
    session_secret,
    session_user,
    start_session,
)
from curation.review.queue import (
    GONE_NOTE,
    KINDS,
    MAX_ITEM_ID,
    STATUSES,
    create_tables,
    gone_records,
    review_gone,
    review_items,
)
from curation.review.views import item_view
from curation.state import StateStore, runs
from schemas.config import Recipe
from schemas.records import CONTENT_COLUMNS

HERE = Path(__file__).parent
FILTERS = ("dataset", "version", "kind", "status", "gone")
# The ``gone`` filter: items whose record a later run no longer found hidden, alone, or listed with the others.
GONE_FILTER = ("hide", "only", "show")
DEFAULT_MODEL_ID = "meta-textgeneration-llama-3-2-1b"
MAX_LISTED = 500  # rows a page of the queue lists (the counts cover them all)
PAGER = ("page", "after", "before")  # besides the filters, what a queue page's address names
# How often a sign-in waiting for another of its name or address (one at a time) tries again.
SIGN_IN_RETRY_SECONDS = 0.02


class StalePage(HTTPException):
    """A decision from a page that no longer shows the item as it is (409): an edit's typed value goes
    back with the answer, so that the annotator's typing is not lost."""

    def __init__(self, error: Exception, form: FormData) -> None:
        super().__init__(409, str(error))
        value = form.get("value") if form.get("action") == "edit" else None
        self.unsaved = value if isinstance(value, str) and value.strip() else None
        self.query = str(form.get("query", ""))  # the queue's filters, kept for the item's next/previous


class NotSignedIn(Exception):
    """No session: pages redirect to the sign-in form, other requests get 401."""


def _csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return token


# What the page's forms post, read before the CSRF check (anyone who reaches the page may post to
# sign-in): Starlette's own limits (1,000 fields of 1 MB each) let one post make it parse a gigabyte.
# An edit's text is the longest field; a PII item's edit posts one field per span marked not PII.
MAX_FORM_BYTES = 4 * 2**20
MAX_FORM_FIELDS = 500


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the form is over {limit // 2**20} MiB: too large to take")


def _within(receive: Receive, limit: int) -> Receive:
    """``receive``, refusing (413) a request body once it passes ``limit`` bytes: it is not read further."""
    read = 0

    async def limited() -> Message:
        nonlocal read
        message = await receive()
        read += len(message.get("body", b""))
        if read > limit:
            raise _too_large(limit)
        return message

    return limited


async def checked_form(request: Request) -> FormData:
    """The POSTed form, once its CSRF token matches the session's; 403 otherwise."""
    if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
        raise _too_large(MAX_FORM_BYTES)
    # No form of the page sends a file: one posted anyway, before any check (to sign-in, signed in or
    # not), would be spooled to disk whatever its size.
    limited = Request(request.scope, _within(request.receive, MAX_FORM_BYTES))
    try:
        form = await limited.form(max_files=0, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FORM_BYTES)
    except StarletteHTTPException as refused:
        # Starlette words it as a count ("Maximum number of files is 0"); say what the user did wrong.
        if refused.status_code == 400 and str(refused.detail).startswith("Too many files"):
            raise HTTPException(400, "no form of this page takes a file: send the form fields only") from None
        if refused.status_code == 400 and str(refused.detail).startswith("Too many fields"):
            raise HTTPException(
                400, f"the form has more than {MAX_FORM_FIELDS} fields: no form of this page sends so many"
            ) from None
        if refused.status_code == 400:  # a body that is no form (a multipart one without its boundary...)
            raise HTTPException(400, f"the form cannot be read ({refused.detail}): send it from the page") from None
        raise
    sent = request.headers.get("x-csrf-token") or form.get("csrf_token") or ""
    expected = request.session.get("csrf", "")
    if not expected or not isinstance(sent, str) or not secrets.compare_digest(sent, expected):
        raise HTTPException(403, "the form's CSRF token is missing or wrong; reload the page and try again")
    return form


def current_user(request: Request) -> User:
    """The signed-in user; the user must still exist (a removed user's session ends)."""
    user = session_user(request.app.state.engine, request.session.get("session"))
    if user is None:
        raise NotSignedIn()
    return user


CurrentUser = Annotated[User, Depends(current_user)]


def admin(user: CurrentUser) -> User:
    if not user.is_admin:
        raise HTTPException(403, f"{user.name} is a {user.role}; only an admin can launch training")
    return user


Admin = Annotated[User, Depends(admin)]
CheckedForm = Annotated[FormData, Depends(checked_form)]
# An item id past the store's integer column is no item (404), not a database error (500).
ItemId = Annotated[int, PathPart(le=MAX_ITEM_ID)]


def create_app(
    state_url: str,
    recipes: Sequence[Recipe] = (),
    secure_cookies: bool = True,
    sign_in_limits: SignInLimits | None = None,
) -> FastAPI:
    """The review app over one state store; ``recipes`` tell it where each dataset is published."""
    sign_in_limits = sign_in_limits or SignInLimits()
    state = StateStore(state_url)
    engine = state.engine
    create_tables(engine)
    destinations = {recipe.dataset: recipe for recipe in recipes}
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals["UNSHOWN_VALUE"] = UNSHOWN_VALUE
    templates.env.globals["GONE_NOTE"] = GONE_NOTE
    shown = URLSafeTimedSerializer(session_secret(engine), salt="training-request")

    app = FastAPI(title="curation review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret(engine),
        session_cookie="curation_review",
        max_age=SESSION_HOURS * 60 * 60,
        same_site="lax",
        https_only=secure_cookies,
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, _: NotSignedIn) -> Response:
        if request.method == "GET":
            # The query too: an item page's filters (which items next and previous go through) survive signing in.
            wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?{urlencode({'next': wanted})}", status_code=303)
        return HTMLResponse("sign in first", status_code=401)

    def render(request: Request, name: str, user: User | None, status_code: int = 200, **context: Any) -> Response:
        context.update(user=user, csrf_token=_csrf_token(request))
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    # Starlette's own too (an unknown page, a form over its size limit), and a path that is no item
    # or version: each as a page that says what went wrong, not the framework's JSON.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        user = session_user(engine, request.session.get("session"))
        # Starlette's own words for an unknown page or method ("Not Found"): said as the page says things.
        if error.detail == "Not Found" and error.status_code == 404:
            error = StarletteHTTPException(404, f"there is no page {request.url.path}", error.headers)
        elif error.status_code == 405:
            error = StarletteHTTPException(
                405, f"{request.url.path} takes no {request.method}: use the page's links and buttons", error.headers
            )
        # A decision from a stale page (409) offers the item as it is now.
        item_page = request.url.path.removesuffix("/decide") if error.status_code == 409 else None
        if item_page and getattr(error, "query", ""):
            item_page += f"?{error.query}"
        unsaved = getattr(error, "unsaved", None)
        response = render(
            request, "error.html", user, error.status_code, error=error, item_page=item_page, unsaved=unsaved
        )
        response.headers.update(error.headers or {})  # a 405's Allow
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError) -> Response:
        # Said in the page's words, not pydantic's ("Input should be a valid integer").
        problems = [(str(e["loc"][0]), str(e["loc"][-1]), e.get("input")) for e in error.errors()]
        detail = "; ".join(_no_such(name, value) for _, name, value in problems)
        status = 404 if any(place == "path" for place, _, _ in problems) else 400
        return await http_error(request, StarletteHTTPException(status, f"{request.url.path}: {detail}"))

    # --- signing in ------------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> Response:
        return render(request, "login.html", None, next=_safe_next(next))

    def try_sign_in(name: str, address: str, password: str) -> tuple[int, User | None] | None:
        """Seconds to wait before trying again (0 when not told to) and the user the password signs in;
        None while another sign-in of the name or from the address is being checked."""
        with sign_in_limits.attempt(name, address) as held:
            if not held:
                return None
            wait = sign_in_limits.wait(name, address)
            if wait:
                return wait, None
            user = authenticate(engine, name, password)
            if user is None:
                sign_in_limits.failed(name, address)
            else:
                sign_in_limits.succeeded(name)
            return 0, user

    @app.post("/login")
    async def login(request: Request, form: CheckedForm) -> Response:
        name, next_page = str(form.get("username", "")), _safe_next(str(form.get("next", "/")))
        address = request.client.host if request.client else ""
        # The hash in a worker thread; the turn waited for here, on the event loop, holding no thread.
        while (outcome := await run_in_threadpool(try_sign_in, name, address, str(form.get("password", "")))) is None:
            await anyio.sleep(SIGN_IN_RETRY_SECONDS)
        wait, user = outcome
        if wait:
            response = render(request, "login.html", None, 429, next=next_page, wait_minutes=math.ceil(wait / 60))
            response.headers["Retry-After"] = str(wait)
            return response
        if user is None:
            return render(request, "login.html", None, 401, next=next_page, failed=True)
        await run_in_threadpool(end_session, engine, request.session.get("session"))
        request.session.clear()  # a new session on sign-in: nothing from before carries over
        request.session["session"] = await run_in_threadpool(start_session, engine, user.name)
        return RedirectResponse(next_page, status_code=303)

    @app.post("/logout")
    def logout(request: Request, form: CheckedForm) -> Response:
        end_session(engine, request.session.get("session"))  # the cookie, if kept, no longer signs anyone in
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # --- the queue -------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def queue(request: Request, user: CurrentUser) -> Response:
        filters = _filters(request, engine)
        total = _count(engine, filters)
        pages = max(1, math.ceil(total / MAX_LISTED))
        page = min(_page(request.query_params.get("page")), pages)
        # The pager's links name the item a page goes on after (or before): counted by offset, a page
        # would skip the items that moved up as those listed before it were decided (an "open" filter).
        after, before = (_item_number(request.query_params.get(name), name) for name in ("after", "before"))
        items = _items(engine, filters, after=after, before=before) if after or before else []
        if not items:
            items = _items(engine, filters, offset=(page - 1) * MAX_LISTED)
        first = _count(engine, filters, below=items[0]["item_id"]) + 1 if items else 1
        # Numbered by where the page starts among the items now (those before it decided, page 2 of the
        # link may be the first), and by the pages left after it (the items after the last one listed).
        page = math.ceil((first - 1) / MAX_LISTED) + 1
        pages = page + math.ceil(max(total - (first - 1) - len(items), 0) / MAX_LISTED)
        left, gone_left = _counts_left(engine, {k: v for k, v in filters.items() if k != "kind"})
        return render(
            request,
            "queue.html",
            user,
            items=items,
            total=total,
            page=page,
            pages=pages,
            first=first,
            more=pages > page,
            filters=filters,
            query=urlencode(filters),
            left=left,
            gone_left=gone_left,
            options=_options(engine),
            kinds=KINDS,
            statuses=STATUSES,
            gone_filter=GONE_FILTER,
            versions=_versions(engine),
            message=request.session.pop("message", None),
        )

    @app.get("/items/{item_id}", response_class=HTMLResponse)
    def item(request: Request, item_id: ItemId, user: CurrentUser) -> Response:
        seen = dec.revision(engine, item_id)  # read first: a decision taken while the page is made makes it stale
        row = _get_item(engine, item_id)
        filters = _filters(request, engine)
        position, previous, following = _neighbours(engine, item_id, filters)
        own, earlier = dec.in_force_through_record(engine, row)
        view = _view(engine, row, user, own, earlier)
        return render(
            request,
            "item.html",
            user,
            item=row,
            seen=seen,
            view=view,
            query=urlencode(filters),
            # Back to the queue's page the item is listed on (the first, when the filters leave it out).
            queue_query=urlencode(
                {**filters, "page": math.ceil(position[0] / MAX_LISTED)} if position[0] > MAX_LISTED else filters
            ),
            previous=previous,
            following=following,
            position=position,
            edit_fields=_edit_fields(row, view, destinations.get(row["dataset"])),
            history=history_listed(dec.history(engine, item_id)),
            earlier=earlier,
            gone=bool(gone_records(engine, row["dataset"], [row["record_id"]])),
            message=request.session.pop("message", None),
        )

    @app.post("/items/{item_id}/decide")
    def decide(request: Request, item_id: ItemId, user: CurrentUser, form: CheckedForm) -> Response:
        row = _get_item(engine, item_id)
        action = str(form.get("action", ""))
        seen = _seen_posted(form)
        try:
            # Before the edit is read: what it changes is judged against the item as it is now.
            dec.check_seen(engine, item_id, seen, action)
        except dec.StaleDecision as error:
            raise StalePage(error, form) from None
        edit = None
        if action == "edit":
            own, others = dec.in_force_through_record(engine, row)
            view = _view(engine, row, user, own, others)
            edit = _edit_from_form(form, view, user, _edit_fields(row, view, destinations.get(row["dataset"])))
            action, edit = _with_pii_again(own, _spans_posted(form, "pii_again"), edit)
        if action == "keep" and dec.holds_already(engine, item_id, action):
            # Taken again, a keep would set aside the edits made after the one in force (see ``in_force``).
            request.session["message"] = f"item {item_id}: already marked not a duplicate"
            query = str(form.get("query", ""))
            return RedirectResponse(f"/items/{item_id}?{query}" if query else f"/items/{item_id}", status_code=303)
        try:
            dec.decide(engine, item_id, user.name, action, edit, seen=seen)
        except dec.StaleDecision as error:
            raise StalePage(error, form) from None
        except dec.DecisionError as error:
            raise HTTPException(400, str(error)) from None
        request.session["message"] = f"item {item_id}: {dec.STATUS_OF[action]}"
        if gone_records(engine, row["dataset"], [row["record_id"]]):
            # Taken all the same: the record comes back with its line put back as it was, and the
            # decision applies then.
            request.session["message"] += f" ({GONE_NOTE})"
        query = str(form.get("query", ""))
        following = _next_open(engine, item_id, _parse_filters(query))
        target = f"/items/{following}" if following else "/"
        return RedirectResponse(f"{target}?{query}" if query else target, status_code=303)

    @app.post("/undo")
    def undo(request: Request, user: CurrentUser, form: CheckedForm) -> Response:
        undone = dec.undo_last(engine, user.name)
        query = str(form.get("query", ""))
        suffix = f"?{query}" if query else ""
        if undone is None:
            request.session["message"] = "nothing to undo"
            return RedirectResponse(f"/{suffix}", status_code=303)
        request.session["message"] = f"undid {undone['action']} on item {undone['item_id']}"
        return RedirectResponse(f"/items/{undone['item_id']}{suffix}", status_code=303)

    @app.get("/items/{item_id}/image")
    def item_image(item_id: ItemId, user: CurrentUser) -> Response:
        row = _get_item(engine, item_id)
        if row["kind"] != "vqa":
            raise HTTPException(404, "only VQA items have an image")
        name = json.loads(row["payload"] or "{}").get("image", "")
        from connectors.storage import filesystem

        uris = _picture_uris(str(name), destinations.get(row["dataset"]), row["dataset"])
        for uri in uris:  # the first folder that holds it (a name may be in each of several sources' folders)
            try:
                fs, path = filesystem(uri)
                with fs.open_input_stream(path) as stream:
                    # Read to a limit: a name such as /dev/zero would otherwise be read until memory runs out.
                    body = stream.read(MAX_PICTURE_BYTES + 1)
                break
            except (OSError, ValueError):
                continue
        else:
            raise HTTPException(404, f"the image {name} cannot be read")
        if len(body) > MAX_PICTURE_BYTES:
            raise HTTPException(404, f"the image {name} is over {MAX_PICTURE_BYTES // 2**20} MiB: too large to show")
        # Served on the page's origin: a record's "image" that is SVG, HTML or script, typed by its name,
        # would run there when opened. Only a picture Pillow recognises is served, typed by its content.
        media_type = _picture_type(body)
        if media_type is None:
            raise HTTPException(404, f"the image {name} is not a picture (PNG, JPEG, GIF, WebP...)")
        return Response(body, media_type=media_type, headers={"Content-Security-Policy": PICTURE_POLICY})

    # --- dataset versions and training -----------------------------------------------------------

    @app.get("/datasets/{dataset}/v{version}", response_class=HTMLResponse)
    def version_page(request: Request, dataset: str, version: int, user: CurrentUser) -> Response:
        manifest, report, problem = _manifest(destinations.get(dataset), dataset, version)
        open_items, gone_items = _counts_left(engine, {"dataset": dataset, "version": str(version)})
        return render(
            request,
            "version.html",
            user,
            404 if manifest is None else 200,  # the page still links the version's queue, if it has one
            dataset=dataset,
            version=version,
            manifest=manifest,
            manifest_json=json.dumps(manifest, indent=2) if manifest else None,
            report=report,
            problem=problem,
            model_id=DEFAULT_MODEL_ID,
            open_items=open_items,
            gone_items=sum(gone_items.values()),
        )

    @app.get("/datasets/{dataset}/v{version}/report.html")
    def report_page(dataset: str, version: int, user: CurrentUser) -> Response:
        body = _read_version_file(destinations.get(dataset), dataset, version, "report.html")
        if body is None:
            raise HTTPException(404, f"{dataset} v{version} has no report.html")
        # The report is a generated file with inline styles and plots: a sandbox with no scripts.
        policy = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"
        return HTMLResponse(body, headers={"Content-Security-Policy": policy})

    @app.post("/datasets/{dataset}/v{version}/training", response_class=HTMLResponse)
    def training(
        request: Request,
        dataset: str,
        version: int,
        user: Admin,
        form: CheckedForm,
    ) -> Response:
        """The dry run: the exact CreateTrainingJob request; ``confirm=yes`` launches the one shown."""
        recipe = destinations.get(dataset)
        if recipe is None:
            raise HTTPException(404, f"no recipe for {dataset}: start the server with --recipe")
        sagemaker, missing = _train_module()
        context: dict[str, Any] = {"dataset": dataset, "version": version, "missing": missing}
        model_id = str(form.get("model_id") or DEFAULT_MODEL_ID)
        instance_type = str(form.get("instance_type") or "") or None
        context.update(model_id=model_id, instance_type=instance_type or "")
        if sagemaker is None:
            return render(request, "training.html", user, **context)
        if form.get("confirm") == "yes":
            # Launch exactly the request the admin was shown (signed when shown, valid 15 minutes).
            try:
                request_body = shown.loads(str(form.get("signed_request", "")), max_age=15 * 60)
            except BadSignature:
                raise HTTPException(400, "the confirmed request is missing, changed or too old; start again") from None
            try:
                job = sagemaker.launch(request_body)
            except Exception as error:  # the handoff's, the SDK's and botocore's errors, shown as they are
                context["error"] = f"launch failed: {error}"
                return render(request, "training.html", user, status_code=400, **context)
            return RedirectResponse(f"/training/{job}", status_code=303)
        from curation.published import version_uri

        uri = version_uri(recipe.output.dest, dataset, version)
        try:
            # The page's dry run is the request its confirm launches: no fallback to the unverified pinned spec
            # there, as `curation train launch` refuses it (the server's CURATION_JUMPSTART_SPECS=pinned chooses it).
            specs = sagemaker.spec_resolver(pinned_fallback=False)
            request_body = sagemaker.training_request(uri, model_id, instance_type=instance_type, specs=specs)
        except Exception as error:  # the handoff's own errors (no manifest, bad checksum, unknown model)
            context["error"] = f"no training request for {dataset} v{version}: {error}"
            return render(request, "training.html", user, status_code=400, **context)
        context["needs"] = sagemaker.placeholders(request_body)
        context["held_out"] = sagemaker.held_out(request_body, uri)  # the notes the CLI prints too
        context["delta_only"] = sagemaker.delta_only(uri)
        return render(
            request,
            "training.html",
            user,
            request_json=json.dumps(request_body, indent=2),
            signed_request=shown.dumps(request_body),
            **context,
        )

    @app.get("/training/{job_name}", response_class=HTMLResponse)
    def job_status(request: Request, job_name: str, user: Admin) -> Response:
        sagemaker, missing = _train_module()
        if sagemaker is None:
            return render(request, "training.html", user, missing=missing, dataset=None, version=None)
        try:
            described = sagemaker.describe(job_name)
        except Exception as error:  # the job may be unknown to the endpoint
            raise HTTPException(404, f"cannot describe {job_name}: {error}") from None
        return render(request, "job.html", user, job=job_name, described=json.dumps(described, indent=2, default=str))

    return app


# --- helpers ---------------------------------------------------------------------------------------


def _no_such(name: str, value: object) -> str:
    """What is wrong with a part of a page's address that is not what it names (an item, a version)."""
    if name == "item_id":
        return f"no item {value}: an item is a number from 1 to {MAX_ITEM_ID}"
    if name == "version":
        return f"no version {value}: a version is a number, such as 2"
    return f"{name} {value} is not one"


def _safe_next(target: str) -> str:
    """Only same-site paths: a sign-in link must not send people elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _clean(pairs: Any) -> dict[str, str]:
    """The filters of a query the page made itself (a decision's, to find the next item): one it did not
    make is dropped. A version that is not a number is kept: dropped, every version would be listed."""
    return {k: v for k, v in pairs if k in FILTERS and v and (k != "gone" or v in GONE_FILTER)}


def _version(value: str) -> int | None:
    """A version filter's number; None for one no store holds ("v2", "²", past the column's range)."""
    return int(value) if value.isascii() and value.isdigit() and int(value) <= MAX_ITEM_ID else None


def _filters(request: Request, engine: sa.Engine) -> dict[str, str]:
    """The queue's filters in a page's address (an empty value is "all"). A name that is no filter, or
    a value its filter does not take, is refused (400) saying what it takes: ignored, it would list
    every item; matched, none, each as if the queue held nothing of the kind."""
    filters: dict[str, str] = {}
    for name, value in request.query_params.items():
        if name in PAGER:  # refused here too: an item's address carries them
            if name == "page":
                _page(value)
            else:
                _item_number(value, name)
            continue
        if name not in FILTERS:
            raise HTTPException(400, f"no filter {name!r}: the filters are {', '.join(FILTERS)} (and page)")
        if value:
            if problem := _refused(engine, name, value):
                raise HTTPException(400, problem)
            filters[name] = value
    return filters


def _refused(engine: sa.Engine, name: str, value: str) -> str | None:
    """What is wrong with ``value`` for the filter ``name``; None when it takes it (any dataset does:
    one the queue does not hold lists nothing, and the page says so)."""
    if name == "version" and _version(value) is None:
        return f"no version {value!r}: a version is a number, such as 2"
    if name == "kind" and value not in KINDS and value not in (stored := _stored_kinds(engine)):
        return f"no kind {value!r}: the kinds are {', '.join(sorted({*KINDS, *stored}))}"
    if name == "status" and value not in STATUSES:
        return f"no status {value!r}: the statuses are {', '.join(STATUSES)}"
    if name == "gone" and value not in GONE_FILTER:
        return f"no gone filter {value!r}: it is {', '.join(GONE_FILTER[:-1])} or {GONE_FILTER[-1]}"
    return None


def _stored_kinds(engine: sa.Engine) -> set[str]:
    """The kinds of the items the queue holds: those of KINDS, and any a stage of another version flags."""
    with engine.connect() as db:
        return set(db.execute(sa.select(review_items.c.kind).distinct()).scalars())


def _parse_filters(query: str) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return _clean(parse_qsl(query))


def _where(query: sa.Select, filters: dict[str, str]) -> sa.Select:
    for name, value in filters.items():
        if name == "version":
            number = _version(value)
            query = query.where(review_items.c.version == number if number is not None else sa.false())
        elif name == "gone":
            if value != "show":
                query = query.where(_IS_GONE if value == "only" else ~_IS_GONE)
        else:
            query = query.where(review_items.c[name] == value)
    return query


def _select(filters: dict[str, str]) -> sa.Select:
    return _where(review_items.select().order_by(review_items.c.item_id), filters)


def _item_number(value: str | None, name: str) -> int | None:
    """The item a queue page goes on after (``after``) or before (``before``); refused (400) as a page is."""
    if not value:
        return None
    if (number := _address_number(value)) is not None:
        return number
    raise HTTPException(400, f"no item {value!r} to list {name}: it is an item number, such as 2")


def _page(value: str | None) -> int:
    """The queue page asked for, from 1 (none or empty: the first). Anything else is refused (400) saying
    what a page is: taken as the first, a mistyped ``page=2x`` showed page 1 without a word."""
    if not value:
        return 1
    if (number := _address_number(value)) is not None:
        return number
    raise HTTPException(400, f"no page {value!r}: a page is a number from 1, such as 2")


def _address_number(value: str) -> int | None:
    """A whole number from 1 in a page's address, or None."""
    # ASCII digits only: "²" is a digit to isdigit() that int() refuses; at most ten, which int() takes.
    if value.isascii() and value.isdigit() and len(value) <= 10 and 0 < int(value) <= MAX_ITEM_ID:
        return int(value)
    return None


# The join condition to an item's row in ``review_gone``, which it has when a later run did not find its record
# (``curation.review.queue.review_gone``).
_GONE_JOIN = sa.and_(
    review_gone.c.dataset == review_items.c.dataset, review_gone.c.record_id == review_items.c.record_id
)
# Whether it has one, as a filter: of its own alias, so that a query joining ``review_gone`` (the list's)
# can take it too.
_gone_row = review_gone.alias("gone_row")
_IS_GONE = sa.exists().where(
    _gone_row.c.dataset == review_items.c.dataset, _gone_row.c.record_id == review_items.c.record_id
)


def _items(
    engine: sa.Engine, filters: dict[str, str], offset: int = 0, after: int | None = None, before: int | None = None
) -> list[dict[str, Any]]:
    """One page of items under the filters (from ``offset``, or those just after or before an item),
    without their payloads (the list never shows them), each with ``gone``: whether a later run did not
    find its record."""
    ids = review_items.c.item_id
    columns = [c for c in review_items.c if c.name != "payload"]
    query = sa.select(*columns, review_gone.c.run_id.is_not(None).label("gone"))
    query = _where(query.select_from(review_items.outerjoin(review_gone, _GONE_JOIN)), filters)
    if before is not None:
        query = query.where(ids < before).order_by(ids.desc())
    else:
        query = query.where(ids > after).order_by(ids) if after is not None else query.order_by(ids).offset(offset)
    with engine.connect() as db:
        rows = [dict(row._mapping) for row in db.execute(query.limit(MAX_LISTED))]
    return rows[::-1] if before is not None else rows


def _count(engine: sa.Engine, filters: dict[str, str], below: int | None = None) -> int:
    """The items under the filters (with an id below one, if given)."""
    query = _where(sa.select(sa.func.count()).select_from(review_items), filters)
    if below is not None:
        query = query.where(review_items.c.item_id < below)
    with engine.connect() as db:
        return db.execute(query).scalar_one()


def _neighbours(
    engine: sa.Engine, item_id: int, filters: dict[str, str]
) -> tuple[tuple[int, int], int | None, int | None]:
    """The item's place among the items under the filters (0 when they leave it out; (0, 0) when they
    match no item), and the items before and after it there: counted in the store, not listed (a
    queue can hold many thousands). An item the filters leave out (opened by its address, or decided
    since: no longer open) still has them, so that next and previous go on through the filtered ones."""
    ids = review_items.c.item_id
    # One pass over the filtered items (conditional aggregates: COUNT skips the CASEs' NULLs).
    query = sa.select(
        sa.func.max(sa.case((ids < item_id, ids))),
        sa.func.min(sa.case((ids > item_id, ids))),
        sa.func.count(),
        sa.func.count(sa.case((ids <= item_id, 1))),
        sa.func.count(sa.case((ids == item_id, 1))),
    ).select_from(review_items)
    with engine.connect() as db:
        previous, following, total, place, listed = db.execute(_where(query, filters)).one()
    return (place if listed else 0, total), previous, following


def _get_item(engine: sa.Engine, item_id: int) -> dict[str, Any]:
    try:
        return dec.get_item(engine, item_id)
    except dec.DecisionError as error:
        raise HTTPException(404, str(error)) from None


def _next_open(engine: sa.Engine, after: int, filters: dict[str, str]) -> int | None:
    """The next open item left to do: not one whose record is no longer in the input (see ``_counts_left``),
    unless the filters ask for those (``gone=only`` or ``show``)."""
    query = _select({"gone": "hide", **filters, "status": "open"}).where(review_items.c.item_id > after).limit(1)
    with engine.connect() as db:
        row = db.execute(query).first()
    return row.item_id if row else None


def _counts_left(engine: sa.Engine, filters: dict[str, str]) -> tuple[dict[str, int], dict[str, int]]:
    """Open items per kind under the filters: those left to do, and apart from them those whose record
    is no longer in the input. A decision on these has no effect (unless the record comes back), so
    counted as left to do they would keep an annotator's work from ever being done."""
    # One query: review_gone holds a record once, so the join adds no row.
    query = sa.select(review_items.c.kind, sa.func.count(), sa.func.count(review_gone.c.run_id))
    query = query.select_from(review_items.outerjoin(review_gone, _GONE_JOIN)).group_by(review_items.c.kind)
    query = _where(query, {**{k: v for k, v in filters.items() if k != "gone"}, "status": "open"})
    with engine.connect() as db:
        rows = db.execute(query).all()
    left, gone = {kind: every - off for kind, every, off in rows}, {kind: off for kind, _, off in rows}
    kinds = (*KINDS, *sorted(set(left) - set(KINDS)))
    return {kind: left.get(kind, 0) for kind in kinds}, {kind: gone.get(kind, 0) for kind in kinds}


def _options(engine: sa.Engine) -> dict[str, list[str]]:
    with engine.connect() as db:
        datasets = db.execute(sa.select(review_items.c.dataset).distinct().order_by(review_items.c.dataset))
        versions = db.execute(sa.select(review_items.c.version).distinct().order_by(review_items.c.version))
        return {"dataset": [r[0] for r in datasets], "version": [str(r[0]) for r in versions]}


def _versions(engine: sa.Engine) -> list[tuple[str, int]]:
    """Published dataset versions the state store knows, newest first."""
    query = (
        sa.select(runs.c.dataset, runs.c.version)
        .where(runs.c.status == "published")
        .order_by(runs.c.dataset, runs.c.version.desc())
    )
    with engine.connect() as db:
        return [(row.dataset, row.version) for row in db.execute(query)]


def _read_version_file(recipe: Recipe | None, dataset: str, version: int, name: str) -> bytes | None:
    if recipe is None:
        return None
    from connectors.storage import filesystem
    from curation.published import version_uri

    try:
        fs, path = filesystem(version_uri(recipe.output.dest, dataset, version))
        with fs.open_input_stream(f"{path}/{name}") as stream:
            return stream.read()
    except (FileNotFoundError, ValueError):
        return None
    except OSError as error:  # there, maybe, but not given (no access, the store out of reach): not "no manifest"
        raise HTTPException(502, f"cannot read {name} of {dataset} v{version}: {error}") from None


def _manifest(recipe: Recipe | None, dataset: str, version: int) -> tuple[dict[str, Any] | None, bool, str | None]:
    """The version's manifest, whether it has a report, and what went wrong if there is no manifest."""
    if recipe is None:
        return None, False, f"the server does not know where {dataset} is published: start it with --recipe"
    body = _read_version_file(recipe, dataset, version, "manifest.json")
    if body is None:
        return None, False, f"{dataset} v{version} has no manifest under {recipe.output.dest}"
    has_report = _read_version_file(recipe, dataset, version, "report.html") is not None
    return json.loads(body), has_report, None


MAX_PICTURE_BYTES = 64 * 2**20  # a VQA item's image the page serves (larger pictures are not shown)

# A picture needs nothing else: no scripts, styles or frames, whatever the browser makes of its bytes.
PICTURE_POLICY = "default-src 'none'; sandbox"


def _picture_uris(name: str, recipe: Recipe | None, dataset: str) -> list[str]:
    """Where the picture a VQA item names may be read: in the folder of one of its dataset's ``images``
    sources, as that source reads it (a name relative to the folder), and nowhere else. The name is
    the record's: customer data, which could otherwise name any picture the server can read (another
    dataset's, a key of another bucket). 404 when it is in no such folder."""
    from schemas.config import ImagesSource

    if recipe is None:
        raise HTTPException(404, f"the server does not know the image folders of {dataset}: start it with --recipe")
    roots = [_normal(source.path) for source in recipe.sources if isinstance(source, ImagesSource)]
    if not roots:
        raise HTTPException(404, f"{dataset} has no images source: its records' images are not shown")
    named = "://" in name or name.startswith("/")
    uris = [_normal(name if named else f"{root}/{name}") for root in roots]
    # Compared as written, ".." taken out: a name that climbs out of the folder, or a path or URI
    # elsewhere, is in none of them.
    inside = [uri for uri in uris if any(_in_folder(uri, root) for root in roots)]
    if not name or "\x00" in name or not inside:  # a NUL names no file: the file system refuses it
        raise HTTPException(404, f"the image {name} is not in the images folder of a source of {dataset}")
    # And as the file system finds it: a link in the folder may lead anywhere the server can read (the
    # images source sets such a row aside; a record could still name one).
    folders = [_resolved(root) for root in roots]
    kept = [uri for uri in map(_resolved, inside) if any(_in_folder(uri, folder) for folder in folders)]
    if not kept:
        raise HTTPException(
            404,
            f"the image {name} is a link to a file outside the images folder of a source of {dataset}: "
            "the page shows only images inside the folder",
        )
    return kept


def _in_folder(uri: str, root: str) -> bool:
    return uri.startswith(f"{root.rstrip('/')}/")


def _resolved(uri: str) -> str:
    """A local path with its links followed (the folder's own too); an ``s3://`` URI as it is (S3 has no links)."""
    return uri if uri.startswith("s3://") else os.path.realpath(uri)


def _normal(uri: str) -> str:
    """A local path or ``s3://`` URI with "..", "." and doubled slashes taken out (a local one absolute)."""
    if uri.startswith("s3://"):
        return "s3://" + posixpath.normpath(uri.removeprefix("s3://"))
    return os.path.normpath(os.path.abspath(uri.removeprefix("file://")))


def _picture_type(body: bytes) -> str | None:
    """The media type of a raster picture (from its content, not its name); None for anything else."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(body)) as picture:
            media_type = Image.MIME.get(picture.format or "")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        return None
    return media_type if media_type and media_type.startswith("image/") else None


def _train_module() -> tuple[Any, str | None]:
    """``train.sagemaker``, imported only when asked for (it loads the SageMaker SDK)."""
    try:
        return importlib.import_module("train.sagemaker"), None
    except ImportError as error:
        return None, f"training handoff is not available here: train.sagemaker cannot be imported ({error})"


# An item shows the fields it is about (a PII item its field; a near duplicate, the set-aside record's
# compared fields): editing another one starts from an empty box, which must not read as the field
# being empty.
UNSHOWN_VALUE = "This item does not show the field's current value: what you type replaces all of it."


def _view(
    engine: sa.Engine, row: dict[str, Any], user: User, own: dict[str, Any] | None, others: list[dict[str, Any]]
) -> dict[str, Any]:
    """The item as its page shows it, with the decisions in force on it (``own``) and through the record's
    other items (``others``: ``dec.in_force_through_record``). A PII item's editor holds the record's other
    fields too, so it takes the latter (its other flagged fields, stages, versions) as the next run applies
    them: an edit started from the fields as first flagged would put back what those edits changed."""
    not_pii = dec.not_pii_of(own)
    if row["kind"] != "pii":
        return item_view(row, user, not_pii, dec.fields_of(own))
    return item_view(row, user, not_pii, *dec.record_in_force(engine, row, own, others))


# Content fields an edit cannot change: a VQA record's picture is read (from its ``image`` name) before
# the review stage, so a new name would be counted as an edit and change nothing that is published.
NOT_EDITABLE = {"vqa": {"image"}}


def _edit_fields(row: dict[str, Any], view: dict[str, Any], recipe: Recipe | None) -> list[str]:
    """The record fields an edit of this item may change: the record kind's content fields (when the
    server knows the recipe) and those the flag shows. A quarantined record never reaches the review
    stage, so it has none."""
    if row["kind"] == "quarantined":
        return []
    kind = recipe.record.kind if recipe else None
    fixed = NOT_EDITABLE.get(kind, ()) if kind else ()
    fields = [name for name in CONTENT_COLUMNS[kind] if name not in fixed] if kind else []
    # Nor one the flag shows (a near_dedup stage whose ``fields`` name the image compares its name).
    return fields + [name for name in view["edit_values"] if name and name not in fields and name not in fixed]


def _edit_from_form(form: FormData, view: dict[str, Any], user: User, fields: list[str]) -> dec.Edit:
    """Changed fields and spans marked not PII; a field left as shown is not an edit."""
    shown = view.get("edit_values", {})
    edit = dec.Edit()
    field = str(form.get("field", ""))
    value = form.get("value")
    if field and field not in fields:
        raise HTTPException(400, f"{field!r} cannot be edited on this item; it has {', '.join(fields) or 'no fields'}")
    if field and isinstance(value, str):
        value = value.replace("\r\n", "\n")
        if value != shown.get(field):
            edit.fields[field] = value
    edit.not_pii = _spans_posted(form, "not_pii")
    if edit.not_pii and not user.sees_pii:
        raise HTTPException(403, NOT_PII_REFUSAL)
    return edit


def _seen_posted(form: FormData) -> str:
    """The revision of the item's decisions the form's page showed; 400 for a form without one (taken, it
    would decide over another annotator's decision unchecked) or with one no page sends (taken as stale,
    it would be refused as changed since the page showed it)."""
    seen = form.get("seen")
    if isinstance(seen, str) and dec.REVISION.fullmatch(seen):
        return seen
    sent = f" {seen!r}" if isinstance(seen, str) else ""
    raise HTTPException(400, f"no seen{sent}: it is the item's revision its page showed; reload the item's page")


def _spans_posted(form: FormData, name: str) -> list[tuple[str, int, int]]:
    """The spans a form's ``name`` fields name (``field:start:end`` each); 400 for one that is not a span."""
    spans = []
    for key in (str(v) for v in form.getlist(name)):
        span = re.fullmatch(r"(.+):(\d+):(\d+)", key)
        if span is None:
            raise HTTPException(400, f"{name}={key!r}: a span is field:start:end")
        spans.append((span.group(1), int(span.group(2)), int(span.group(3))))
    return spans


def history_listed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An item's decision rows (``decisions.history``) as its page lists them, each with what it says
    (``_history_after``). The approve stored with a PII again's edit (``decisions.pii_again``) is no
    decision anyone took but part of that one, which lists it: shown, it read as an approve nobody
    clicked. Undone apart from its edit (an earlier release's undo), it stood alone, and is listed,
    undone too when an undo took it later (``dec.undone_together``)."""
    parsed = [(row, json.loads(row["before"])) for row in rows]
    listed = []
    for (row, before), following in zip_longest(parsed, parsed[1:]):
        with_its_edit = following is not None and dec.undone_together(row, following[0])
        if not (with_its_edit and dec.pii_again_of(row, following)):
            listed.append({**row, "after": _history_after(row, before)})
    return listed


def _history_after(decision: dict[str, Any], before: dict[str, Any]) -> str:
    """What a decision (its ``before`` parsed) says, for the item's history: its ``after``, stored as
    escaped JSON ("\u00dc"), with its characters; a PII again (``decisions.pii_again``) as the spans it
    made PII again and its author's own values, not the copy of the others' values it stores for an
    earlier release."""
    again = before.get("again")
    if again is None:
        return json.dumps(json.loads(decision["after"]), ensure_ascii=False)
    spans = ", ".join(f"{field}[{start}:{end}]" for field, start, end in again["pii"])
    own = {key: again[key] for key in ("fields", "not_pii") if again.get(key)}
    return f"PII again: {spans}" + (f" {json.dumps(own, ensure_ascii=False)}" if own else "")


def _with_pii_again(
    current: dict[str, Any] | None, again: list[tuple[str, int, int]], edit: dec.Edit
) -> tuple[str, dec.Edit | None]:
    """The decision an edit that marks ``again`` PII again takes, stored as the Label Studio import stores
    it (``decisions.pii_again``): an approve and an edit with what stands after it, undone together; with
    nothing left standing, an approve alone that says the spans. Without ``again``, the edit as it is.
    ``current`` is the decision in force on the item that the page's edit was read against."""
    if not again:
        return "edit", edit
    if not set(again) <= dec.not_pii_of(current):
        raise HTTPException(400, "only a span that the decisions in force mark not PII can be marked PII again")
    if set(again) & set(edit.not_pii):
        raise HTTPException(400, "a span cannot be marked not PII and PII again at once")
    replacing = dec.pii_again(current, again, edit)
    return ("edit" if replacing else "approve"), replacing
