"""Runs untrusted Python programs (model-written code) in a fresh, limited interpreter.

Each program runs in a new `python -I` process started with `subprocess.Popen` (no Python runs
after fork in the calling process, which may be a multithreaded JAX process). A short bootstrap,
itself a fresh `python -I -S` interpreter, sets up the confinement and then `execve`s the
program's interpreter:

1. new namespaces (`unshare(2)` through ctypes): network (only a down loopback: nothing can be
   reached) and PID (the program is PID 1 of its own namespace, so when it or the bootstrap dies
   every process it started dies with it, even ones that left the process group); a non-root
   caller also needs a user namespace for these;
2. rlimits, hard and soft: address space, CPU seconds, file size, open files, processes;
3. as root: no supplementary groups and the `nobody` user and group, so the program cannot write
   where `nobody` cannot (the repository, the home directories) nor raise its limits;
4. a new session (process group), a private temporary directory as cwd, HOME and TMPDIR, and an
   environment of a few fixed variables (nothing inherited: no tokens or keys);
5. the parent's wall-clock limit kills the whole process group (and so the PID namespace).

What is NOT isolated: the file system is not virtualised. The program can read every file that
`nobody` can read (world-readable files, the Python installation) and write to world-writable
directories (`/tmp`, `/dev/shm`), limited by the file-size rlimit; without a uid drop (a non-root
caller) it has the caller's file access. SysV IPC and the kernel itself are shared. What could
not be set up on this machine (no `unshare`, not root, no interpreter readable by `nobody`) is
found by a probe on first use, logged as a warning and recorded in `Sandbox.isolation`; the
sandbox then runs with what remains rather than failing. It stops mistakes (an infinite loop, a
fork bomb, a huge allocation, a stray `rm`, a network call), not a determined attacker: run
untrusted code from the internet in a VM or container as well.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import math
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_log = logging.getLogger(__name__)

CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_OUTPUT_KEEP = 64 * 1024  # bytes of each stream kept from its start and from its end

# Runs as the caller's user in a fresh interpreter; configures, then execs the program. A
# failure before the exec is written to the status fd (closed on exec), so the parent tells a
# broken sandbox from a failing program.
_BOOTSTRAP = r"""
import ctypes, json, os, resource, sys
cfg = json.loads(sys.argv[1])
status = cfg["status_fd"]
try:
    libc = ctypes.CDLL(None, use_errno=True)
    if cfg["unshare"] and libc.unshare(cfg["unshare"]) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    if cfg["unshare"] & 0x20000000:  # CLONE_NEWPID: the next child is the namespace's PID 1
        pid = os.fork()
        if pid:
            os.close(status)
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            os._exit(code if code >= 0 else 128 - code)
    for name, value in cfg["limits"]:
        resource.setrlimit(getattr(resource, name), (value, value))
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
    if cfg["unshare"] & 0x20000000:  # die with the bootstrap (set after setuid, which clears
        libc.prctl(1, 9)  # it): PR_SET_PDEATHSIG, SIGKILL. Before this, the group kill covers it.
    os.set_inheritable(status, False)
    os.execve(cfg["python"], [cfg["python"], "-I", "main.py"], cfg["env"])
except BaseException as e:
    os.write(status, f"{type(e).__name__}: {e}".encode())
    os._exit(1)
"""


class SandboxError(RuntimeError):
    """The sandbox itself could not run a program (not the program's fault)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits of one program (rlimits; the CPU limit follows its wall-clock limit)."""

    memory_mb: int = 2048  # RLIMIT_AS: address space, so a 4 GiB allocation fails
    file_size_mb: int = 32  # RLIMIT_FSIZE: any file written, its captured stdout/stderr too
    open_files: int = 64  # RLIMIT_NOFILE
    # RLIMIT_NPROC: counted per user (all `nobody` processes; in a user namespace, its own).
    processes: int = 32

    def rlimits(self, timeout_s: float) -> list[tuple[str, int]]:
        return [
            ("RLIMIT_AS", self.memory_mb << 20),
            ("RLIMIT_CPU", math.ceil(timeout_s) + 1),
            ("RLIMIT_FSIZE", self.file_size_mb << 20),
            ("RLIMIT_NOFILE", self.open_files),
            ("RLIMIT_NPROC", self.processes),
            ("RLIMIT_CORE", 0),
        ]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a program ended: its exit code (negative: killed by that signal; None: timed out),
    the start and end of its stdout and stderr, and its wall time."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float


@dataclasses.dataclass(frozen=True)
class _Setup:
    unshare: int
    uid: int | None
    gid: int | None
    python: str


class Sandbox:
    """Runs programs confined as the module docstring describes; `workers` at a time in
    `run_many`. The confinement available here is probed on first use (`isolation`)."""

    def __init__(self, limits: Limits = Limits(), workers: int = 4):
        self.limits = limits
        self.workers = max(1, workers)
        self._setup: _Setup | None = None
        self._isolation: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def isolation(self) -> dict[str, str]:
        """What confines the programs on this machine, one entry per aspect (for summaries)."""
        self._ensure_setup()
        return dict(self._isolation)

    def run(self, source: str, stdin: bytes = b"", *, timeout_s: float) -> Outcome:
        """Runs `source` as `main.py` in a fresh directory with `stdin` on its standard input,
        killed after `timeout_s` seconds of wall time."""
        return self._run(self._ensure_setup(), source, stdin, timeout_s)

    def run_many(self, jobs: Sequence[tuple[str, bytes, float]]) -> list[Outcome]:
        """`run(source, stdin, timeout_s=...)` for every job, `workers` at a time, in order."""
        setup = self._ensure_setup()
        if len(jobs) <= 1 or self.workers == 1:
            return [self._run(setup, *job) for job in jobs]
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(lambda job: self._run(setup, *job), jobs))

    # -- setup --------------------------------------------------------------------------------

    def _ensure_setup(self) -> _Setup:
        with self._lock:
            if self._setup is None:
                self._setup = self._probe()
            return self._setup

    def _works(self, setup: _Setup) -> str | None:
        """None if a trivial program runs under `setup`, else why not."""
        try:
            out = self._run(setup, "print(6 * 7)", b"", 20.0)
        except SandboxError as e:
            return str(e)
        if out.stdout.strip() != "42":
            return f"exit {out.returncode}: {out.stderr.strip()[-200:]}"
        return None

    def _probe(self) -> _Setup:
        root = os.geteuid() == 0
        user = 0 if root else CLONE_NEWUSER  # a non-root caller needs a user namespace
        warnings, setup = [], None
        for flags, what in [
            (user | CLONE_NEWNET | CLONE_NEWPID, "network and PID namespaces"),
            (user | CLONE_NEWNET, "network namespace"),
            (0, "none"),
        ]:
            candidate = _Setup(flags, None, None, sys.executable)
            if (why := self._works(candidate)) is None:
                setup = candidate
                self._isolation["namespaces"] = what + (" (in a user namespace)" if user and
                                                        flags else "")  # fmt: skip
                break
            warnings.append(f"unshare({what}) unavailable: {why}")
        if setup is None:
            raise SandboxError(f"the code sandbox cannot run even a trivial program: {warnings}")
        if not setup.unshare & CLONE_NEWNET:
            self._isolation["network"] = "NOT isolated (no network namespace)"
        else:
            self._isolation["network"] = "none (empty network namespace)"
        if not setup.unshare & CLONE_NEWPID:
            self._isolation["processes"] = (
                "process-group kill on timeout; children that leave the group can outlive it"
            )
        else:
            self._isolation["processes"] = "PID namespace: all die with the program or on timeout"
        if root:
            nobody = _nobody()
            tried = []
            for python in _interpreters():
                candidate = dataclasses.replace(setup, uid=nobody[0], gid=nobody[1], python=python)
                if (why := self._works(candidate)) is None:
                    setup = candidate
                    break
                tried.append(f"{python}: {why}")
            else:
                warnings.append(
                    f"cannot drop to uid {nobody[0]} (no Python interpreter it can run: {tried}); "
                    "programs run as root"
                )
        self._isolation["user"] = (
            f"uid {setup.uid} gid {setup.gid} (nobody), no supplementary groups"
            if setup.uid is not None
            else f"the caller's uid {os.geteuid()}"
        )
        self._isolation["interpreter"] = setup.python
        self._isolation["limits"] = json.dumps(dataclasses.asdict(self.limits))
        self._isolation["warnings"] = "; ".join(warnings) or "none"
        for warning in warnings:
            _log.warning("code sandbox: %s", warning)
        return setup

    # -- one program --------------------------------------------------------------------------

    def _run(self, setup: _Setup, source: str, stdin: bytes, timeout_s: float) -> Outcome:
        with tempfile.TemporaryDirectory(prefix="lopd-sandbox-") as tmp, \
                tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:  # fmt: skip
            workdir = Path(tmp)
            (workdir / "main.py").write_text(source, encoding="utf-8")
            (workdir / "main.py").chmod(0o644)
            if setup.uid is not None:
                os.chown(workdir, setup.uid, setup.gid)
            status_r, status_w = os.pipe()
            env = {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8",
                "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            }  # fmt: skip
            config = {
                "status_fd": status_w, "unshare": setup.unshare, "uid": setup.uid,
                "gid": setup.gid, "python": setup.python, "env": env,
                "limits": self.limits.rlimits(timeout_s),
            }  # fmt: skip
            start = time.monotonic()
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, json.dumps(config)],
                    stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=tmp, env=env,
                    pass_fds=(status_w,), start_new_session=True,
                )  # fmt: skip
            finally:
                os.close(status_w)
            timed_out = False
            try:
                proc.communicate(stdin, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc)
            wall_s = time.monotonic() - start
            with os.fdopen(status_r, "rb") as status:
                setup_error = status.read().decode(errors="replace")
            if setup_error:
                raise SandboxError(f"sandbox setup failed: {setup_error}")
            return Outcome(
                returncode=None if timed_out else proc.returncode,
                stdout=_read_ends(out), stderr=_read_ends(err),
                timed_out=timed_out, wall_s=wall_s,
            )  # fmt: skip


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to the program's process group (its session), then reap the bootstrap."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone
    proc.wait()


def _read_ends(f) -> str:
    """The first and last `_OUTPUT_KEEP` bytes of a captured stream, as text."""
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    if size <= 2 * _OUTPUT_KEEP:
        data = f.read()
    else:
        head = f.read(_OUTPUT_KEEP)
        f.seek(size - _OUTPUT_KEEP)
        data = head + b"\n[... output cut ...]\n" + f.read()
    return data.decode("utf-8", errors="replace")


def _nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def _interpreters() -> list[str]:
    """Interpreters for the program, best first: this one, then a system one of the same
    version (a virtualenv under a private home directory cannot be run by `nobody`)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = [sys.executable, shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")]
    found.append(shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin"))
    unique = {}
    for path in found:
        if path:
            unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


@functools.cache
def default_sandbox(workers: int = 4) -> Sandbox:
    """The process-wide sandbox with `workers` parallel programs (default limits)."""
    return Sandbox(workers=workers)
