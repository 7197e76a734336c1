"""The defense server as a child process: started, waited for until SERVING, always stopped.

One helper for everything that starts a real server (the submission check, the demo, the
server benchmark, the tests), so that they all start and stop it the same way.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from avc_common.rpc.client import DefenseClient, DefenseError


class ServerStartError(RuntimeError):
    """The server exited, or did not report SERVING in time; the message ends with its log's tail."""


def free_port() -> int:
    """A TCP port free on loopback now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """The server as a subprocess with its log in a temp file; always stopped on exit."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - open for the process's life, closed on exit
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def log_tail(self, lines: int = 12) -> str:
        self._log.flush()
        self._log.seek(0)
        return "".join(self._log.readlines()[-lines:]).rstrip()

    def peak_rss(self) -> int | None:
        """Peak resident memory in bytes (Linux /proc), or None where it cannot be read."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        return next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")), None)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (what ``docker stop`` sends), then SIGKILL after ``timeout_s``; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._log.close()


def wait_serving(server: ServerProcess, target: str, timeout_s: float) -> float:
    """Seconds until the health service says SERVING; ServerStartError if the server dies or times out."""
    start = time.monotonic()
    with DefenseClient(target, timeout_s=1.0, retries=0) as client:
        while time.monotonic() - start < timeout_s:
            if server.proc.poll() is not None:
                raise ServerStartError(f"server exited with status {server.proc.returncode} before SERVING:\n"
                                  f"{server.log_tail()}")
            try:
                if client.health() == "SERVING":
                    return time.monotonic() - start
            except DefenseError:
                pass
            time.sleep(0.2)
    raise ServerStartError(f"not SERVING after {timeout_s:.0f} s (raise --timeout-s if loading is slow):\n"
                           f"{server.log_tail()}")
