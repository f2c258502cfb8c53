"""A `vllm serve` subprocess for tests and benchmarks: start, wait until healthy, read /metrics, stop."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

START_TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_cmd(model: str, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model, "--host", "127.0.0.1",
            "--port", str(port), *extra]


def serve_env() -> dict[str, str]:
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}


def counter(metrics: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter over its label sets (those carrying ``labels``) in a /metrics text."""
    values = []
    for label_block, value in re.findall(rf"^{re.escape(name)}(?:{{([^}}]*)}})? ([0-9.e+]+)$", metrics, re.M):
        if all(f'{k}="{v}"' in label_block for k, v in labels.items()):
            values.append(float(value))
    if not values:
        raise KeyError(f"{name} {labels or ''} not in /metrics")
    return sum(values)


class Server:
    """A `vllm serve` subprocess in its own session; stopped (SIGINT, then SIGKILL) on exit."""

    def __init__(self, cmd: list[str], log: Path, start_timeout: float = START_TIMEOUT) -> None:
        self.log = log
        self.start_timeout = start_timeout
        self._fh = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._fh, stderr=subprocess.STDOUT, env=serve_env(),
                                     start_new_session=True)
        self.port = int(cmd[cmd.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}:\n{self.tail()}")
            if self.healthy():
                return
            time.sleep(1)
        raise TimeoutError(f"vllm serve not ready after {self.start_timeout}s:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._fh.close()

    def __enter__(self) -> Server:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
