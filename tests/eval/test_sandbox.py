"""The sandbox against what a model might emit: none of it may pass or harm the host."""

import os
import socket
import subprocess
import time

import pytest

from lopd_jax.eval.sandbox import Limits, Sandbox


@pytest.fixture(scope="module")
def box():
    return Sandbox(Limits(processes=16), workers=2)


def drops_user(box):
    return not box.isolation["user"].startswith("the caller's")


def processes_of(uid: int) -> list[str]:
    out = subprocess.run(["ps", "-u", str(uid), "-o", "pid="], capture_output=True, text=True)
    return out.stdout.split()


def no_survivors(uid: int, before: set[str]) -> bool:
    """No process of `uid` beyond `before` within 5 s (killed processes are reaped
    asynchronously once their namespace's PID 1 is gone)."""
    deadline = time.monotonic() + 5
    while set(processes_of(uid)) - before:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_runs_a_program_with_its_stdin(box):
    out = box.run("import sys\nprint(sys.stdin.read()[::-1])", b"abc", timeout_s=10)
    assert (out.returncode, out.stdout, out.timed_out) == (0, "cba\n", False)


def test_infinite_loop_is_killed_at_its_time_limit(box):
    out = box.run("while True:\n    pass\n", timeout_s=1.0)
    assert out.timed_out and out.returncode is None
    assert 1.0 <= out.wall_s < 5.0


def test_a_4_gib_allocation_fails(box):
    out = box.run("x = bytearray(4 << 30)\nprint('allocated')", timeout_s=10)
    assert out.returncode != 0 and "MemoryError" in out.stderr and "allocated" not in out.stdout


def test_a_fork_bomb_is_contained(box):
    if not drops_user(box):
        pytest.skip("RLIMIT_NPROC binds only a non-root uid; this machine cannot drop to one")
    before = set(processes_of(65534))
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    out = box.run(bomb, timeout_s=2.0)
    assert out.timed_out  # it never finished; the whole group (PID namespace) was killed
    assert no_survivors(65534, before)  # nothing it started survives


def test_a_child_that_leaves_the_process_group_dies_with_the_program(box):
    if "PID namespace" not in box.isolation["processes"]:
        pytest.skip("no PID namespace here: " + box.isolation["processes"])
    daemon = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n"
        "    time.sleep(1000)\nprint(os.getpid())\n"
    )
    uid = 65534 if drops_user(box) else os.geteuid()
    before = set(processes_of(uid))
    out = box.run(daemon, timeout_s=10)
    assert out.stdout.strip() == "1"  # PID 1 of its namespace
    assert no_survivors(uid, before)


def test_writing_outside_its_directory_is_denied(box, tmp_path):
    if not drops_user(box):
        pytest.skip("without a uid drop the program has the caller's file access")
    target = tmp_path / "escaped.txt"
    repo_target = os.path.join(os.path.dirname(__file__), "escaped.txt")
    program = (
        f"for path in {[str(target), repo_target]!r}:\n"
        "    try:\n        open(path, 'w').write('x')\n        print('wrote', path)\n"
        "    except OSError as e:\n        print('denied', path, e.errno)\n"
    )
    out = box.run(program, timeout_s=10)
    assert "wrote" not in out.stdout and out.stdout.count("denied") == 2
    assert not target.exists() and not os.path.exists(repo_target)


def test_no_network(box):
    if box.isolation["network"].startswith("NOT"):
        pytest.skip(box.isolation["network"])
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        program = (
            "import socket\n"
            f"for addr in [('127.0.0.1', {port}), ('1.1.1.1', 53)]:\n"
            "    try:\n        socket.create_connection(addr, timeout=2)\n"
            "        print('connected')\n"
            "    except OSError as e:\n        print('refused', e.errno)\n"
        )
        out = box.run(program, timeout_s=10)
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
    assert "connected" not in out.stdout and out.stdout.count("refused") == 2


def test_the_environment_holds_no_secrets(box, monkeypatch):
    monkeypatch.setenv("LOPD_TEST_SECRET", "hunter2")
    out = box.run("import os\nprint(sorted(os.environ.items()))", timeout_s=10)
    assert "hunter2" not in out.stdout and "LOPD_TEST_SECRET" not in out.stdout
    assert "PATH" in out.stdout


def test_output_is_cut_not_buffered_whole(box):
    out = box.run("import sys\nfor _ in range(10**4):\n    sys.stdout.write('x' * 1000)\n",
                  timeout_s=20)  # fmt: skip
    assert out.returncode == 0 and len(out.stdout) < 200_000 and "output cut" in out.stdout


def test_programs_run_in_parallel_in_order(box):
    jobs = [(f"print({i} * 2)", b"", 10.0) for i in range(6)]
    assert [o.stdout.strip() for o in box.run_many(jobs)] == [str(2 * i) for i in range(6)]


def test_isolation_is_recorded(box):
    iso = box.isolation
    assert {"namespaces", "network", "processes", "user", "interpreter", "limits"} <= set(iso)
    if os.geteuid() == 0:
        assert drops_user(box), iso  # this machine (root) must be able to drop to nobody
