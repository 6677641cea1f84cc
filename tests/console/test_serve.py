"""`contend serve` with the console: its flags, as an operator runs it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from contend.cli import main

TOKEN = "serve-test-console-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_serve_runs_the_console_with_a_token_from_the_environment():
    port = free_port()
    env = {**os.environ, "CONTEND_CONSOLE_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "contend", "serve", "--port", str(port), "--protect-reads"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _ = get(f"{base}/metrics")
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        assert status == 200
        assert get(f"{base}/console/zombies")[0] == 401
        status, text = get(f"{base}/console/", {"authorization": f"Bearer {TOKEN}"})
        assert status == 200 and 'id="zombies-now">0<' in text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"contend serve did not stop within 30 s of Ctrl-C; it said: {err}")
    assert f"console: {base}/console/ (actions on (token required))" in err
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--console-token", "short"], "console token: must be at least 16 characters"),
        (["--protect-reads"], "--protect-reads needs a console token"),
    ],
)
def test_serve_refuses_a_weak_or_missing_token(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("CONTEND_CONSOLE_TOKEN", raising=False)
    assert main(["serve", "--port", "0", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_serve_stops_cleanly_on_ctrl_c_or_sigterm_whatever_it_inherited(sig):
    """A supervisor stops a server with SIGTERM, and a parent may leave SIGINT ignored (a
    background job of a shell script): contend serve stops cleanly on either all the same."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "contend", "serve", "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                assert get(f"http://127.0.0.1:{port}/metrics")[0] == 200
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        proc.send_signal(sig)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
