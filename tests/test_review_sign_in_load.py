"""Sign-ins from one address are checked one at a time, each hashing a password (0.1-0.6 s): a burst
of them must not take every worker thread while they wait their turn, or every page stalls."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from curation.review import auth
from curation.review.app import create_app
from curation.review.auth import add_user

HASH_SECONDS = 0.2


class SlowHasher(PasswordHasher):
    """Argon2 as the page uses it, taking as long as a costly hash on a busy server."""

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        time.sleep(HASH_SECONDS)
        return super().verify(hash, password)


def test_a_page_answers_while_a_burst_of_sign_ins_from_one_address_waits_its_turn(tmp_path: Path, monkeypatch) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    add_user(sa.create_engine(state_url), "rita", "reviewer", "correct horse battery")
    monkeypatch.setattr(auth, "_HASHER", SlowHasher())
    # One client: one event loop and its one pool of worker threads (40), as a server has.
    with TestClient(create_app(state_url), base_url="https://testserver") as client:
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)

        def guess(n: int) -> float:
            form = {"username": f"guess{n}", "password": "wrong", "csrf_token": csrf}
            assert client.post("/login", data=form).status_code in (401, 429)
            return time.monotonic()

        with ThreadPoolExecutor(50) as pool:
            guesses = [pool.submit(guess, n) for n in range(50)]
            time.sleep(4 * HASH_SECONDS)  # the burst has started: its guesses wait for each other
            start = time.monotonic()
            assert client.get("/login").status_code == 200
            answered = time.monotonic()
            done = [guessed.result() for guessed in guesses]
    # The page answered at once, while most guesses were still waiting their turn (one hash each).
    assert answered - start < 2 * HASH_SECONDS, answered - start
    assert sum(when > answered for when in done) >= 10
