"""Sign-ins from one address are checked one at a time, each hashing a password (0.1-0.6 s): a burst
of them must not take every worker thread while they wait their turn, or every page stalls."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import VerifyMismatchError
from fastapi.testclient import TestClient

from curation.review import auth
from curation.review.app import create_app
from curation.review.auth import add_user

HASH_SECONDS = 0.3


class SlowHasher(PasswordHasher):
    """A wrong password, found as slowly as a costly hash on a busy server, and always as slowly: the
    test counts guesses answered before the page, so each must take the same time however loaded the
    machine is (argon2's own work would not)."""

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        time.sleep(HASH_SECONDS)
        raise VerifyMismatchError


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

        # More guesses than the pool's 40 threads: had each held one while waiting its turn, the page
        # would have waited for a thread, that is for about 11 guesses to be answered (13.5 s here).
        with ThreadPoolExecutor(50) as pool:
            guesses = [pool.submit(guess, n) for n in range(50)]
            time.sleep(4 * HASH_SECONDS)  # the burst has started: its guesses wait for each other
            assert client.get("/login").status_code == 200
            answered = time.monotonic()
            done = [guessed.result() for guessed in guesses]
    # Counted, not timed: the page answered while the guesses went on one at a time (about 4 of them
    # answered in the 4 hashes' time it waited), not after those holding threads had gone.
    assert sum(when < answered for when in done) < 9, sorted(done)
