"""Reads a version folder's files once, in a child process, before the server loads it.

TensorFlow reads a SavedModel's variables (`variables.index` and the data shards) while holding
Python's interpreter lock. A read that does not return (a stalled network mount) would then stop
every thread of the server, the ones answering requests included. The child process takes that
stall instead: the load waits for it without holding the lock, and TensorFlow then reads the
same bytes from the page cache.

This file runs as a script (`python -I -S read_ahead.py SERVER_PID EXPORT_DIR`), so it imports only the
standard library; `serving.bundle` imports `version_entries` from it too.
"""
import logging
import os
import subprocess
import sys
import threading
import time

_CHUNK_BYTES = 1 << 20


def version_entries(export_dir):
    """Yields the path of every folder and file under `export_dir`, following links (a linked
    `variables/` too) and walking each real folder once (a link back up the tree would loop)."""
    seen = set()
    for folder, folders, files in os.walk(export_dir, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            folders[:] = []
            continue
        seen.add(real)
        for name in folders + files:
            yield os.path.join(folder, name)


def read_every_file(export_dir):
    """Reads each regular file under `export_dir` to its end. A file that cannot be read is
    skipped: the load that follows reports it in its own words."""
    buffer = bytearray(_CHUNK_BYTES)
    for path in version_entries(export_dir):
        if os.path.isdir(path):
            continue
        try:
            with open(path, "rb", buffering=0) as file:
                while file.readinto(buffer):
                    pass
        except OSError:
            continue


def read_ahead_in_child(export_dir):
    """Reads `export_dir`'s files in a child process and waits for it; returns once every
    read has returned. The caller is expected to have refused FIFOs and devices first
    (`serving.bundle.check_regular_files`): here a read that blocks blocks only the child."""
    try:
        subprocess.run([sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid()), export_dir],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
    except OSError as error:  # no child processes allowed here: the load reads in-process
        logging.getLogger("serving.read_ahead").warning(
            "Cannot start the read-ahead of %s (%s); loading it without", export_dir, error)


def _exit_with_parent(parent_pid, interval=0.5):
    """Exits this process once the server that started it is gone (killed, or exited while this
    child was stuck in a read), from a thread: the main one may be in a read that never returns."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(0)
    threading.Thread(target=watch, daemon=True).start()


if __name__ == "__main__":
    _exit_with_parent(int(sys.argv[1]))
    read_every_file(sys.argv[2])
