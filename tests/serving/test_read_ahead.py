"""The read-ahead child: a version's files are read by a child process first, so a read that
never returns (a stalled network mount) stalls that child and not the server.

TensorFlow reads `variables.index` holding Python's interpreter lock: loading a version whose
index is a FIFO in-process stops every thread of the process. A FIFO stands in for the stalled
file here; the server itself refuses FIFOs before the read-ahead (test_robustness.py)."""
import os
import signal
import subprocess
import sys
import threading
import time

import serving.read_ahead
from serving.read_ahead import read_ahead_in_child, version_entries
from tests.serving.rest_helpers import process_running, wait_for


def _children(pid):
    """The pids of `pid`'s child processes."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as file:
            found += [int(child) for child in file.read().split()]
    return found


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read().decode(errors="replace")
    except OSError:
        return ""


def _version_with_a_stalled_index(tmp_path):
    version = tmp_path / "1"
    (version / "variables").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(os.urandom(3 << 20))
    stalled = version / "variables" / "variables.index"
    os.mkfifo(stalled)  # reading it blocks until a writer comes, as a read from a stalled mount
    return version, stalled


def test_a_read_that_never_returns_stalls_the_child_while_this_process_runs_on(tmp_path):
    version, stalled = _version_with_a_stalled_index(tmp_path)
    waiting = threading.Thread(target=read_ahead_in_child, args=(str(version),), daemon=True)
    waiting.start()
    readers = wait_for(lambda: [pid for pid in _children(os.getpid())
                                if "read_ahead.py" in _cmdline(pid)], 30, 0.05,
                       what="a read-ahead child process")
    # The waiting thread holds no lock: Python code in this process runs at full speed.
    began, ticks = time.perf_counter(), 0
    while time.perf_counter() - began < 1.0:
        ticks += 1
    assert ticks > 100_000
    assert waiting.is_alive()
    with open(stalled, "wb"):  # the "mount" comes back: the child's read ends, then the wait
        pass
    waiting.join(30)
    assert not waiting.is_alive()
    assert not any(process_running(pid) for pid in readers)


def test_a_file_that_cannot_be_read_is_left_to_the_load(tmp_path):
    version = tmp_path / "1"
    version.mkdir()
    (version / "saved_model.pb").write_bytes(b"\0" * 1000)
    os.symlink(tmp_path / "nowhere", version / "lost")
    read_ahead_in_child(str(version))  # returns: the load that follows reports what is wrong


def test_every_folder_is_walked_once_even_through_a_link_back_up_the_tree(tmp_path):
    version = tmp_path / "1"
    (version / "variables").mkdir(parents=True)
    (version / "variables" / "variables.index").write_bytes(b"")
    os.symlink(version, version / "variables" / "loop")
    entries = sorted(os.path.relpath(path, version) for path in version_entries(str(version)))
    assert entries == ["variables", "variables/loop", "variables/variables.index"]


def test_the_child_dies_with_the_server(tmp_path):
    """A server killed (or exiting) while its read-ahead is stuck leaves no child behind."""
    version, _ = _version_with_a_stalled_index(tmp_path)
    # A stand-in server: loads read_ahead.py by path, as the child runs it (no TensorFlow import).
    server = subprocess.Popen([sys.executable, "-c", (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('r', sys.argv[1]); "
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
        "module.read_ahead_in_child(sys.argv[2])"), serving.read_ahead.__file__, str(version)])
    try:
        (reader,) = wait_for(lambda: _children(server.pid), 30, 0.05, what="the read-ahead child")
        assert process_running(reader)
        server.send_signal(signal.SIGKILL)
        server.wait(30)
        wait_for(lambda: not process_running(reader), 30, 0.05, what="the child gone with its server")
    finally:
        server.kill()
