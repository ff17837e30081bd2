"""Every command line README.md and docs/migrations.md show in ```bash blocks runs as written,
in order, in a fresh copy of the repository, and exits 0 (a line that fails stops the run and
is named).

What the runner adapts, and only that:
- `uv run` uses the test's environment as is (`UV_NO_SYNC`): no install, no network;
- `orchestrator serve` runs in the background, on a free port instead of 8000 (every
  `127.0.0.1:8000` becomes that port), and the next line waits until it answers;
- the test command itself, `uv run pytest`, is not run inside the tests: .ci/run runs it, and
  this checks that .ci/run's command is the README's;
- `python` is whatever `python` the PATH has outside the project's environment, as for a
  newcomer.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SERVE = re.compile(r"^uv run orchestrator serve\b")
TEST_COMMAND = "uv run pytest"
_COPY_IGNORES = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.db", "*.db-*", "*.migrate.lock", "backups", ".pytest_cache",
    ".coverage*", "htmlcov", ".data", ".env",
)


def bash_lines(document: Path) -> list[str]:
    """The command lines of the document's ```bash blocks, in order, comments removed."""
    blocks = re.findall(r"^```bash\n(.*?)^```", document.read_text(), flags=re.MULTILINE | re.DOTALL)
    lines = []
    for block in blocks:
        for line in block.splitlines():
            # A trailing comment starts at a `#` after a blank, outside quotes.
            command = re.sub(r"\s+#[^\"']*$", "", line).strip()
            if command:
                lines.append(command)
    return lines


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def runner_script(lines: list[str], port: int) -> str:
    """One bash script: each line, then a check of its exit status."""
    out = ["set -o pipefail", "serving=", "trap '[ -n \"$serving\" ] && kill $serving' EXIT"]
    for number, line in enumerate(lines, 1):
        line = line.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        if line == TEST_COMMAND:
            continue  # run by .ci/run (see test_the_readme_test_command_is_the_one_ci_runs)
        if SERVE.match(line):
            out += [
                f"{line} --port {port} > serve.log 2>&1 &",
                "serving=$!",
                # Wait for it to answer (or to have died), as a reader of the README would.
                f"for _ in $(seq 1200); do curl -s -o /dev/null http://127.0.0.1:{port}/health/live"
                " && break; kill -0 $serving 2>/dev/null || break; sleep 0.1; done",
                "kill -0 $serving 2>/dev/null || { cat serve.log >&2; "
                f"echo {shlex.quote(f'line {number} failed: {line}')} >&2; exit 1; }}",
            ]
            continue
        out += [
            line,
            f"status=$?; [ $status -eq 0 ] || {{ echo {shlex.quote(f'line {number} failed')}"
            f"\" (exit $status): \"{shlex.quote(line)} >&2; exit 1; }}",
        ]
    return "\n".join(out) + "\n"


def run_document(document: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH: the documents' commands are `uv run ...`")
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=_COPY_IGNORES)
    # The project's environment, where a checkout that ran `uv sync` has it.
    (checkout / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    environment_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "UV_NO_SYNC": "1",
        "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                if p != environment_bin),
    }
    for name in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "UV_PROJECT"):
        env.pop(name, None)
    process = subprocess.Popen(
        ["bash", "--norc", "--noprofile", "-c", runner_script(bash_lines(document), free_port())],
        cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=600)
    finally:
        # Whatever the script started and left (a server it could not stop).
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("document", ["README.md", "docs/migrations.md"])
def test_every_command_line_the_documents_show_runs(document, tmp_path):
    lines = bash_lines(ROOT / document)
    assert len(lines) >= 5  # the blocks were found
    result = run_document(ROOT / document, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_readme_test_command_is_the_one_ci_runs():
    assert TEST_COMMAND in bash_lines(ROOT / "README.md")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert TEST_COMMAND in [line.strip() for line in ci]  # CI's run with REQUIRE_POSTGRES=1
    # ...and the same command once more with PostgreSQL unreachable.
    assert any(line.strip() == f"{TEST_COMMAND} | tee \"$without_postgres\"" for line in ci)


def test_the_runner_names_the_line_that_fails(tmp_path):
    """The runner itself: a failing line stops the run and is named with its exit status."""
    document = tmp_path / "doc.md"
    document.write_text("```bash\ntrue   # fine\nfalse  # not fine\necho never\n```\n")
    script = runner_script(bash_lines(document), 1)
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == "line 2 failed (exit 1): false"
