"""Who may use the review page: users with one role each, passwords hashed with Argon2id.

Roles, from least to most:
- ``reviewer``: works the queue; sees PII items only as redacted text.
- ``pii-reviewer``: also sees the raw text and spans of PII detections, and may mark spans not PII.
- ``admin``: all of that, and may launch training.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from limits import parse, storage, strategies

from curation.review.queue import create_tables, metadata

ROLES = ("reviewer", "pii-reviewer", "admin")
NOT_PII_REFUSAL = "only a pii-reviewer or an admin can mark redactions as not PII"  # the page's and the import's
_HASHER = PasswordHasher()
# Verified against when the user does not exist, so a wrong name takes as long as a wrong password.
_DUMMY_HASH = _HASHER.hash(secrets.token_hex(16))

users = sa.Table(
    "review_users",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# A signed-in session, server-side: signing out or a new password ends it, whatever the cookie says.
sessions = sa.Table(
    "review_sessions",
    metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False, index=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
)
SESSION_HOURS = 12

settings = sa.Table(
    "review_settings",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


class AuthError(ValueError):
    """A user that cannot be created (unknown role, empty name or password)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def sees_pii(self) -> bool:
        """Whether the user sees raw PII and may mark redactions not PII (else ``NOT_PII_REFUSAL``)."""
        return self.role in ("pii-reviewer", "admin")

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def add_user(engine: sa.Engine, name: str, role: str, password: str) -> User:
    """Create a user, or set an existing user's role and password."""
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    if not name.strip():
        raise AuthError("a user needs a name")
    if len(password) < 8:
        raise AuthError("a password needs at least 8 characters")
    create_tables(engine)
    values = {"role": role, "password_hash": _HASHER.hash(password)}
    with engine.begin() as db:
        exists = db.execute(sa.select(users.c.name).where(users.c.name == name)).first()
        if exists:
            db.execute(users.update().where(users.c.name == name).values(**values))
            db.execute(sessions.delete().where(sessions.c.name == name))  # a new password or role: sign in again
        else:
            db.execute(users.insert().values(name=name, created_at=datetime.now(UTC), **values))
    return User(name, role)


def start_session(engine: sa.Engine, name: str) -> str:
    """A new session for ``name``; its id goes in the signed cookie."""
    session_id = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    with engine.begin() as db:
        db.execute(sessions.delete().where(sessions.c.started_at < now - timedelta(hours=SESSION_HOURS)))
        db.execute(sessions.insert().values(session_id=session_id, name=name, started_at=now))
    return session_id


def session_user(engine: sa.Engine, session_id: str | None) -> User | None:
    """The user of a session that has not ended (signed out, password changed, user removed, too old)."""
    if not session_id:
        return None
    since = datetime.now(UTC) - timedelta(hours=SESSION_HOURS)
    query = (
        sa.select(users.c.name, users.c.role)
        .join(sessions, sessions.c.name == users.c.name)
        .where(sessions.c.session_id == session_id, sessions.c.started_at >= since)
    )
    with engine.connect() as db:
        row = db.execute(query).first()
    return User(row.name, row.role) if row else None


def find_user(engine: sa.Engine, name: str) -> User | None:
    with engine.connect() as db:
        row = db.execute(sa.select(users.c.name, users.c.role).where(users.c.name == name)).first()
    return User(row.name, row.role) if row else None


def end_session(engine: sa.Engine, session_id: str | None) -> None:
    if session_id:
        with engine.begin() as db:
            db.execute(sessions.delete().where(sessions.c.session_id == session_id))


def authenticate(engine: sa.Engine, name: str, password: str) -> User | None:
    """The user, if the password is right; None otherwise (never says which part was wrong)."""
    create_tables(engine)
    with engine.connect() as db:
        row = db.execute(users.select().where(users.c.name == name)).first()
    try:
        _HASHER.verify(row.password_hash if row else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    if _HASHER.check_needs_rehash(row.password_hash):
        with engine.begin() as db:
            db.execute(users.update().where(users.c.name == name).values(password_hash=_HASHER.hash(password)))
    return User(row.name, row.role)


def session_secret(engine: sa.Engine) -> str:
    """The key that signs session cookies: made once and kept in the state store, so a restart of
    the server does not sign everyone out."""
    create_tables(engine)
    query = sa.select(settings.c.value).where(settings.c.name == "session_secret")
    with engine.connect() as db:
        row = db.execute(query).first()
    if row:
        return row.value
    try:
        with engine.begin() as db:
            db.execute(settings.insert().values(name="session_secret", value=secrets.token_urlsafe(48)))
    except sa.exc.IntegrityError:
        pass  # another server starting on the same store made it first: both sign with that one
    with engine.connect() as db:
        return db.execute(query).scalar_one()


class SignInLimits:
    """Failed sign-ins, counted per user name and per client address over a moving window.

    Past either limit, sign-in is refused, even with the right password, until the oldest failure
    leaves the window: guessing a password gets slow, and guessing many accounts from one address
    too. The counts live in the server process (the review page runs as one); behind a proxy,
    ``curation review serve --proxy ADDRESS`` makes the address the client's, not the proxy's.
    """

    def __init__(self, per_name: str = "5 per 15 minutes", per_address: str = "30 per 15 minutes") -> None:
        self._limiter = strategies.MovingWindowRateLimiter(storage.MemoryStorage())
        self._rates = {"name": parse(per_name), "address": parse(per_address)}
        # Striped, so that their number stays bounded whatever names are tried.
        self._locks = [threading.Lock() for _ in range(64)]

    @contextmanager
    def attempt(self, name: str, address: str) -> Iterator[bool]:
        """Held while one sign-in of ``name`` from ``address`` is checked, verified and counted: sign-ins
        of one name, or from one address, are taken one at a time. Checked at once, a burst of guesses
        would all pass ``wait`` before the first of them failed, each one a guess past the limit.

        Says whether it is held: not when another such sign-in is, for the caller to try again. Waiting
        here, a burst of sign-ins from one address would hold every worker thread of the page."""
        stripes = sorted({hash((kind, key)) % len(self._locks) for kind, key in (("name", name), ("address", address))})
        with ExitStack() as held:
            for stripe in stripes:
                if not self._locks[stripe].acquire(blocking=False):
                    yield False
                    return
                held.callback(self._locks[stripe].release)
            yield True

    def wait(self, name: str, address: str) -> int:
        """Seconds until ``name`` may try again from ``address``; 0 when it may now."""
        waits = [
            self._limiter.get_window_stats(self._rates[kind], kind, key).reset_time - time.time()
            for kind, key in (("name", name), ("address", address))
            if not self._limiter.test(self._rates[kind], kind, key)
        ]
        return max(1, math.ceil(max(waits))) if waits else 0

    def failed(self, name: str, address: str) -> None:
        self._limiter.hit(self._rates["name"], "name", name)
        self._limiter.hit(self._rates["address"], "address", address)

    def succeeded(self, name: str) -> None:
        """The user knows the password: the name's failures no longer count (the address's still do)."""
        self._limiter.clear(self._rates["name"], "name", name)
