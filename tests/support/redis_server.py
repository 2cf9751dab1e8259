"""A real ``redis-server`` on a free loopback port, without persistence, stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    port: int
    pid: int
    workdir: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(100):
            try:
                # Reap our own child: an exited but unreaped redis-server still answers kill(pid, 0).
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    break
            time.sleep(0.02)
        else:
            os.kill(self.pid, signal.SIGKILL)


def start_redis(port: int | None = None) -> RedisServer:
    """Start redis-server on 127.0.0.1 (``port`` to restart on the same port); wait until it answers."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found; run `bash scripts/ensure-redis.sh`")
    workdir = tempfile.mkdtemp(prefix="mcp-auth-redis-")
    for _attempt in range(5):
        chosen = port or free_port()
        proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(chosen), "--save", "", "--appendonly", "no",
             "--dir", workdir, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", chosen), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return RedisServer(port=chosen, pid=proc.pid, workdir=workdir)
            except OSError:
                time.sleep(0.02)
        proc.kill()
        proc.wait()
        if port is not None:
            break
    raise RuntimeError("could not start redis-server")
