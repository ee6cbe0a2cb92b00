"""The review app as users meet it: `curation review serve` in its own process on a free loopback
port, and signing in to it (the browser is ``tests.conftest.chromium``). Shared by the browser tests
and scripts/screenshots.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page

from tests.conftest import free_port, served
from tests.review_seed import PASSWORD, Seeded

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def review_server(
    seeded: Seeded, recipes: Sequence[Path] = (), env: Mapping[str, str] | None = None, options: Sequence[str] = ()
) -> Iterator[str]:
    """Serve the seeded state store through the real CLI (with the seed's recipes), with more recipes, settings and options if
    given; yields the base URL. The server's output goes to review-server.log in the seeded folder."""
    port = free_port()
    recipes = (seeded.recipe_path, seeded.charts_recipe_path, *recipes)
    options = [*(arg for path in recipes for arg in ("--recipe", str(path))), *options]
    command = [sys.executable, "-m", "curation.cli", "review", "serve", "--port", str(port), *options]
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    with (
        open(seeded.folder / "review-server.log", "ab") as log,
        served(command, f"{base}/login", cwd=seeded.folder, env=env, stdout=log, stderr=subprocess.STDOUT),
    ):
        yield base


def sign_in(browser: Browser, base: str, name: str) -> Page:
    page = browser.new_context(viewport={"width": 1200, "height": 800}).new_page()
    page.goto(f"{base}/")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    return page
