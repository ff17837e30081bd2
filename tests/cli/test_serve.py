"""`orchestrator serve --workers N`: N uvicorn worker processes, one migration."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_with_two_workers_migrates_once_and_answers(db_url: str, tmp_path):
    port = _free_port()
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "serve", "--workers", "2", "--port", str(port),
         "--database-url", db_url, "--env", "development"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "AUTO_MIGRATE": "true"},
    )
    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert ready is not None and ready.status_code == 200
        # Both workers finish starting (each applies the start-up checks in its lifespan).
        while time.monotonic() < deadline:
            if log.read_text().count("Application startup complete") == 2:
                break
            time.sleep(0.2)
        answers = [httpx.get(f"http://127.0.0.1:{port}/health/live").status_code
                   for _ in range(5)]
        assert answers == [200] * 5
    finally:
        process.terminate()
        process.wait(timeout=30)
    output = log.read_text()
    assert output.count("migrated the database from base to") == 1, output
    assert output.count("Started server process") == 2, output
    assert output.count("Application startup complete") == 2, output


def test_workers_must_be_at_least_one(run_cli):
    result = run_cli("serve", "--workers", "0")
    assert result.returncode == 2
    assert "--workers" in result.stderr and "Traceback" not in result.stderr
