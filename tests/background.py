"""Study subprocesses started in the background, so the suite's second core runs them while the first runs tests.

A study end to end is a new Python + JAX process (1-2 s before its first compilation) that
compiles its own programs; most of that is one core's work. A test module declares the
subprocesses its tests read as ``Run`` constants and maps the fixtures that read them in a
module-level ``BACKGROUND = {"fixture_name": [run, ...]}``; ``conftest.py`` starts, when the
session's first test starts, every run whose fixture a selected test uses (in the order the tests
will want them), one at a time beside the test process, two while the test process waits for one
(``Background.result``); it also runs the modules that read runs after the others. The test then asserts on the finished process exactly as if it had run
``subprocess.run`` itself: same command, same working directory, same environment.

A run's directory (a fresh temporary directory) is ``{dir}`` in its arguments. A run that has to
follow another one (a second invocation on the first one's output directory) names it in
``after``: it starts once that one has finished and works in the same directory; its
``snapshot`` files (relative to ``{dir}``) are copied to ``Finished.before`` just before it
starts, so that a test can check what the earlier run wrote and what this one left unchanged.
A ``task`` (a function of the directory, in place of a command) drives subprocesses itself, e.g.
starts a worker and kills it; it runs in a thread beside the tests, so it must not use JAX.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """``python ARGV...`` in the repository root, as a user runs a study (compared by identity)."""

    argv: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # added to the session's environment
    task: Callable[[pathlib.Path], Any] | None = None  # run instead of a command; returns Finished.value
    prepare: Callable[[pathlib.Path], None] | None = None  # writes inputs into {dir} when the run is queued
    after: Run | None = None
    snapshot: tuple[str, ...] = ()
    timeout: float = 300.0
    name: str = "run"

    def command(self, directory: pathlib.Path) -> list[str]:
        return [sys.executable, *(arg.replace("{dir}", str(directory)) for arg in self.argv)]


def study(module: str, *flags: str, **options) -> Run:
    """``python -m experiments.<module> FLAGS...``."""
    return Run(("-m", f"experiments.{module}", *flags), name=module, **options)


@dataclasses.dataclass
class Finished:
    """A run that ended: its directory, the ``CompletedProcess``, a directory with copies of its ``snapshot`` files.

    ``before`` holds the files as they were just before the run started (a missing file is missing there too).
    """

    dir: pathlib.Path
    completed: subprocess.CompletedProcess | None  # None for a task
    before: pathlib.Path | None
    value: Any = None  # what a task returned


class _Job:
    def __init__(self, run: Run, directory: pathlib.Path, before: pathlib.Path | None) -> None:
        self.run, self.dir, self.before = run, directory, before
        self.started = self.done = False
        self.finished: Finished | None = None
        self.error: BaseException | None = None
        self.process: subprocess.Popen | None = None


class Background:
    """Runs jobs in threads: ``slots`` at a time, one more while a test waits in ``result``.

    Every run gets the environment and umask the session had when this object was made, whatever a test
    changes for itself meanwhile (``monkeypatch.setenv``, ``os.umask``).
    """

    def __init__(self, make_dir: Callable[[str], pathlib.Path], slots: int = 1) -> None:
        self._make_dir, self._slots = make_dir, slots
        self._env = dict(os.environ)
        self._umask = os.umask(0o022)
        os.umask(self._umask)
        self._dispatch_error: BaseException | None = None
        self._cond = threading.Condition()
        self._jobs: dict[Run, _Job] = {}
        self._queue: list[_Job] = []
        self._running = self._waiting = 0
        self._closed = False
        self._dispatcher = threading.Thread(target=self._dispatch, name="background-runs", daemon=True)
        self._dispatcher.start()
        atexit.register(self.close)  # an interrupted session leaves no study running either

    def schedule(self, runs: Iterable[Run]) -> None:
        """Queue ``runs`` (and what they follow) in this order; a run already queued keeps its place."""
        with self._cond:
            for run in runs:
                self._add(run)
            self._cond.notify_all()

    def _add(self, run: Run) -> _Job:
        if run in self._jobs:
            return self._jobs[run]
        directory = self._add(run.after).dir if run.after is not None else self._make_dir(run.name)
        before = self._make_dir(f"{run.name}-before") if run.snapshot else None
        job = self._jobs[run] = _Job(run, directory, before)
        try:
            if run.prepare is not None:  # here, in the test process's main thread, before anything runs beside it
                run.prepare(job.dir)
        except Exception as error:  # handed to the test that reads the run
            job.error, job.started, job.done = error, True, True
        else:
            self._queue.append(job)
        return job

    def result(self, run: Run) -> Finished:
        """Wait for ``run`` (queued now, first, if nobody asked for it before) and return it."""
        with self._cond:
            job = self._add(run)
            chain, cursor = [], run
            while cursor is not None:  # the run and what it follows go to the front of the queue
                chain.append(self._jobs[cursor])
                cursor = cursor.after
            for waiting in chain:
                if waiting in self._queue:
                    self._queue.remove(waiting)
            self._queue[:0] = [j for j in reversed(chain) if not j.started]
            self._waiting += 1
            self._cond.notify_all()
            try:
                while not self._cond.wait_for(lambda: job.done, timeout=1.0):
                    if not self._dispatcher.is_alive() and not job.started:
                        raise RuntimeError(f"the background dispatcher stopped; {run.name} never started") from (
                            self._dispatch_error)
            finally:
                self._waiting -= 1
        if job.error is not None:
            raise job.error
        assert job.finished is not None
        return job.finished

    def close(self) -> None:
        """Start nothing more and kill what still runs (the session is over)."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            running = [job.process for job in self._jobs.values() if job.process is not None and not job.done]
            self._cond.notify_all()
        for process in running:
            if process.poll() is None:
                process.kill()

    def _ready(self) -> _Job | None:
        for job in self._queue:
            if job.run.after is None or self._jobs[job.run.after].done:
                return job
        return None

    def _dispatch(self) -> None:
        try:
            self._dispatch_forever()
        except BaseException as error:  # result() reports it instead of waiting for ever
            self._dispatch_error = error

    def _dispatch_forever(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._closed or (self._running < self._slots + bool(self._waiting) and self._ready())
                )
                if self._closed:
                    return
                job = self._ready()
                assert job is not None
                self._queue.remove(job)
                job.started = True
                self._running += 1
            threading.Thread(target=self._execute, args=(job,), name=f"run-{job.run.name}", daemon=True).start()

    def _execute(self, job: _Job) -> None:
        try:
            run = job.run
            if run.after is not None and self._jobs[run.after].error is not None:
                raise RuntimeError(f"{run.name} follows a run that failed") from self._jobs[run.after].error
            for name in run.snapshot:
                if (job.dir / name).exists():
                    (job.before / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(job.dir / name, job.before / name)
            if run.task is not None:
                job.finished = Finished(job.dir, None, job.before, run.task(job.dir))
                return
            command = run.command(job.dir)
            process = subprocess.Popen(command, cwd=ROOT, env={**self._env, **dict(run.env)}, umask=self._umask,
                                       text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            with self._cond:
                job.process = process
            try:
                stdout, stderr = process.communicate(timeout=run.timeout)
            except subprocess.TimeoutExpired:  # as subprocess.run(timeout=...) does: kill, then raise
                process.kill()
                process.communicate()
                raise
            completed = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
            job.finished = Finished(job.dir, completed, job.before)
        except BaseException as error:  # handed to the test that reads the run
            job.error = error
        finally:
            with self._cond:
                job.done = True
                self._running -= 1
                self._cond.notify_all()


def needed_runs(items: Sequence) -> list[Run]:
    """The runs the selected tests read, in the order of the first test that reads each."""
    runs: list[Run] = []
    for item in items:
        declared = getattr(getattr(item, "module", None), "BACKGROUND", None) or {}
        for fixture in getattr(item, "fixturenames", ()):
            for run in declared.get(fixture, ()):
                if run not in runs:
                    runs.append(run)
    return runs
