"""Shared fixtures. The S3 fixture starts a real S3-compatible server (moto in server mode) on a
free loopback port and points the standard AWS settings at it, so the code under test talks HTTP
to it exactly as it would to AWS or MinIO."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytest_plugins = ["tests.pg"]  # the PostgreSQL server fixture

CHROMIUM = "/usr/bin/chromium"  # Debian's, from scripts/system-packages.txt


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server for {url} did not start in {timeout}s")


@contextmanager
def served(command: list[str], ready_url: str, **popen: Any) -> Iterator[subprocess.Popen]:
    """A server process for the block: started, waited for until ``ready_url`` answers, then stopped."""
    process = subprocess.Popen(command, **popen)
    try:
        wait_for_http(ready_url, process)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium (installed by the test setup), headless, driven by Playwright."""
    from playwright.sync_api import sync_playwright  # only the browser tests pay for it

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto server process on loopback; yields its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with served(command, f"{endpoint}/moto-api/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        yield endpoint


@pytest.fixture(scope="session")
def aws_env(moto_server: str) -> Iterator[str]:
    """The standard AWS settings, pointed at the test server (never at AWS)."""
    settings = {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in (*settings, "AWS_PROFILE", "AWS_SESSION_TOKEN")}
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.update(settings)
    try:
        yield moto_server
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def bucket(aws_env: str) -> str:
    """A fresh bucket on the test server."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=aws_env).create_bucket(Bucket=name)
    return name


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean working folder, also the current directory, so nothing lands in the checkout."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
