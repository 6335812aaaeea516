"""A child process that announces itself by writing a file (its ports), started and
stopped with bounded waits: what ``ProcessBackend`` and the benchmarks' backend
processes share (stdlib only)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence


def spawn(what: str, cmd: Sequence[str], ready_file: str, start_timeout: float,
          cwd: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``cmd`` and wait until it has written ``ready_file`` (atomically: the
    children write a temporary file and rename it): ``(process, the file's text)``.
    RuntimeError naming ``what``, with the end of the child's stderr, if it exits first
    or does not get there within ``start_timeout`` seconds (the child is then stopped)."""
    proc = subprocess.Popen(list(cmd), cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + start_timeout
    try:
        while not os.path.exists(ready_file):
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"{what} exited: {err.strip()[-500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not serving after {start_timeout}s")
            time.sleep(0.05)
        with open(ready_file) as f:
            return proc, f.read()
    except BaseException:
        stop(proc)
        raise


def stop(proc: subprocess.Popen[bytes], frozen: bool = False) -> None:
    """SIGTERM (after SIGCONT if ``frozen``) and wait, then SIGKILL; close its stderr.
    Bounded: about 20 s at most."""
    if proc.poll() is None:
        if frozen:
            proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10.0)
    if proc.stderr is not None:
        proc.stderr.close()
