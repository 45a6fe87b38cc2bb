"""The flusher's discovery file: its name, its bytes, and who may remove it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from oceanus import discovery

#: A pid no live process has (above the kernel's default pid_max of 2**22).
GONE_PID = 2**22 + 7


def test_the_file_sits_beside_the_duckdb_file(tmp_path: Path) -> None:
    assert discovery.flusher_file(tmp_path / "w.duckdb") == tmp_path / "w.duckdb.flusher.json"


def test_written_bytes_are_the_documented_format(tmp_path: Path) -> None:
    path = discovery.flusher_file(tmp_path / "w.duckdb")
    discovery.write_flusher_info(path, "http://127.0.0.1:9102", pid=4321)
    assert path.read_bytes() == b'{"pid":4321,"admin_url":"http://127.0.0.1:9102"}\n'
    assert not path.with_name(path.name + ".tmp").exists()


def test_read_returns_a_live_flusher_and_ignores_a_dead_one(tmp_path: Path) -> None:
    duckdb_path = tmp_path / "w.duckdb"
    assert discovery.read_flusher_info(duckdb_path) is None
    discovery.write_flusher_info(discovery.flusher_file(duckdb_path), "http://127.0.0.1:1")
    assert discovery.read_flusher_info(duckdb_path) == discovery.FlusherInfo(os.getpid(), "http://127.0.0.1:1")
    discovery.write_flusher_info(discovery.flusher_file(duckdb_path), "http://127.0.0.1:1", pid=GONE_PID)
    assert discovery.read_flusher_info(duckdb_path) is None
    discovery.flusher_file(duckdb_path).write_bytes(b"{not json")
    assert discovery.read_flusher_info(duckdb_path) is None


def test_remove_leaves_a_successors_file(tmp_path: Path) -> None:
    path = discovery.flusher_file(tmp_path / "w.duckdb")
    discovery.write_flusher_info(path, "http://127.0.0.1:1", pid=GONE_PID)
    discovery.remove_flusher_info(path)  # written by another pid: kept
    assert path.exists()
    discovery.remove_flusher_info(path, pid=GONE_PID)
    assert not path.exists()
    discovery.remove_flusher_info(path)  # nothing there: no error


def test_pid_alive() -> None:
    assert discovery.pid_alive(os.getpid())
    assert not discovery.pid_alive(0)
    assert not discovery.pid_alive(-1)
    assert not discovery.pid_alive(GONE_PID)
    # An exited child not yet reaped is a zombie: it holds no port or file.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # until it exits, without reaping it
        assert not discovery.pid_alive(child.pid)
    finally:
        child.wait()


def test_the_flusher_writes_the_file_the_commands_read(tmp_path: Path) -> None:
    from flusher import runner

    # One definition of the format. Read from the module's namespace: the runner imports it
    # under a private name, which is not an attribute the module exports.
    assert vars(runner)["_FlusherInfo"] is discovery.FlusherInfo
    theirs, ours = tmp_path / "a.flusher.json", tmp_path / "b.flusher.json"
    runner._write_discovery(theirs, "http://127.0.0.1:9102")
    discovery.write_flusher_info(ours, "http://127.0.0.1:9102")
    assert theirs.read_bytes() == ours.read_bytes()
