"""Start one command as N processes of a JAX multi-process run on 127.0.0.1 (no JAX here).

    python tests/launcher.py N ARG...

runs ``python ARG...`` N times at once, ``{address}`` in an argument replaced by a free
``127.0.0.1:PORT`` (the coordinator's) and ``{process_id}`` by 0 .. N-1; waits for all, prints
their outputs to stderr and exits with the largest absolute exit status. ``start`` and ``finish``
do the same for a test's background task, and ``kill_when_written`` kills a process mid-way.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_address() -> str:
    """``127.0.0.1:PORT`` with a port free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def start(count: int, args: Sequence[str], env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """``python args...`` as processes 0 .. count-1 of one run (``{address}``, ``{process_id}`` filled in)."""
    address = free_address()
    return [
        subprocess.Popen(
            [sys.executable, *(arg.replace("{address}", address).replace("{process_id}", str(i)) for arg in args)],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(count)
    ]


def finish(processes: Sequence[subprocess.Popen], timeout: float = 240) -> list[str]:
    """Every process's output once all have ended; past ``timeout`` the ones still running are killed."""
    try:
        return [process.communicate(timeout=timeout)[0] for process in processes]
    finally:
        for process in processes:  # one past the timeout: stop them all rather than leave one behind
            if process.poll() is None:
                process.kill()
                process.communicate()


def kill_when_written(processes: Sequence[subprocess.Popen], path: pathlib.Path, lines: int, victim: int = 0,
                      timeout: float = 240) -> None:
    """SIGKILL ``processes[victim]`` once ``path`` holds ``lines`` lines (a process that ends first fails, with the outputs).

    Rows written after the kill (another process finishing its chunk) are the caller's to count,
    once every process has ended.
    """
    deadline = time.monotonic() + timeout
    while (not path.exists() or path.read_text().count("\n") < lines) and time.monotonic() < deadline:
        assert all(process.poll() is None for process in processes), finish(processes)
        time.sleep(0.02)
    processes[victim].send_signal(signal.SIGKILL)


def main() -> None:
    count, args = int(sys.argv[1]), sys.argv[2:]
    processes = start(count, args)
    outputs = finish(processes)
    for i, (process, output) in enumerate(zip(processes, outputs)):
        print(f"process {i} exited {process.returncode}:", output, file=sys.stderr)
    sys.exit(max(abs(process.returncode) for process in processes))


if __name__ == "__main__":
    main()
