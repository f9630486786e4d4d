"""The README's "HTTP API and metrics" examples run: every curl line of its console block, as
written, against a real `flowrelay dev` process (embedded engine, the API on a free port, the
README's token), after the README's own `flowrelay deploy` of hello/nightly."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTION = (ROOT / "README.md").read_text().split("### HTTP API and metrics", 1)[1].split("\n### ", 1)[0]
CURLS = [
    line.strip()
    for block in re.findall(r"```console\n(.*?)```", SECTION, re.S)
    for line in block.splitlines()
    if line.strip().startswith("curl ")
]
TOKEN = re.search(r"export TOKEN=(\S+)", SECTION).group(1)  # type: ignore[union-attr]
FLOWRELAY = str(Path(sys.executable).with_name("flowrelay"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWRELAY_")}
    env.update({
        "FLOWRELAY_HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(ROOT),
        "FLOWRELAY_LOGGING__FORMAT": "json",
        "FLOWRELAY_API__PORT": str(port),
        "FLOWRELAY_API__TOKENS__WRITE": json.dumps([TOKEN]),
        "TOKEN": TOKEN,
    })
    deploy = subprocess.run([FLOWRELAY, "deploy", "examples/hello.py:hello", "--name", "nightly", "--pool",
                             "default", "--param", "name=Ada"], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert deploy.returncode == 0, deploy.stderr
    log = open(tmp_path / "dev.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([FLOWRELAY, "dev"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "dev.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "flowrelay dev did not serve the API within 60 s"
            time.sleep(0.2)
        yield port, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def test_the_section_has_its_examples() -> None:
    assert len(CURLS) >= 8 and any("/api/events" in c for c in CURLS) and any("/metrics" in c for c in CURLS)


def test_readme_curl_lines_run(dev_server: tuple[int, dict[str, str]]) -> None:
    port, env = dev_server
    for line in CURLS:
        command = line.replace("127.0.0.1:4200", f"127.0.0.1:{port}")
        proc = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60)
        if "/api/stream" in line:  # an endless stream, cut by --max-time (curl exit code 28)
            assert proc.returncode == 28 and ": connected" in proc.stdout, (line, proc.stdout, proc.stderr)
            continue
        assert proc.returncode == 0, (line, proc.stdout[-2000:], proc.stderr[-2000:])
        if "/metrics" in line:
            assert "flowrelay_flow_runs" in proc.stdout
        else:
            json.loads(proc.stdout)  # every answer is JSON
        if line.endswith("/runs"):
            assert json.loads(proc.stdout)["parameters"] == {"name": "Grace"}
