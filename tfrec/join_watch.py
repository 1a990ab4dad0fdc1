"""Ends a process that waits too long for its cluster: `python join_watch.py PID SECONDS KIND TASKS`.

`tfrec.distribute.build_strategy(..., join_timeout=...)` starts this file as a process of its own
(by path, so neither tfrec nor TensorFlow is imported): MultiWorkerMirroredStrategy waits for its
peers inside a TensorFlow call that holds the GIL, so no thread of the waiting process could act.

The watcher reads its stdin. A line or end of file (the strategy was built, or it failed, or the
process ended) means the wait is over, and the watcher exits. If neither comes within SECONDS,
it prints which of TASKS (a JSON list of [name, "host:port"], the other tasks of the cluster)
accept no TCP connection, and kills process PID with SIGKILL: TensorFlow's preemption notifier
catches SIGTERM in a multi_worker process and keeps waiting.
"""
import json
import os
import select
import signal
import socket
import sys


def _answers(address, timeout=2.0):
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


def main(argv):
    pid, seconds, kind, tasks = int(argv[1]), float(argv[2]), argv[3], json.loads(argv[4])
    ready, _, _ = select.select([sys.stdin], [], [], seconds)
    if ready:
        return 0
    silent = [f"{name} at {address}" for name, address in tasks if not _answers(address)]
    if silent:
        why = f"nothing answers at {', '.join(silent)}: check that task's host and port, and that it was started"
    else:
        why = ("every other task answers at its address: one of them may run with another cluster spec, or "
               "may not have reached its strategy yet")
    print(f"tfrec.distribute: {kind}: gave up after {seconds:g} s (strategy join_timeout) waiting for the "
          f"cluster; {why}. Ending this process.", file=sys.stderr, flush=True)
    os.kill(pid, signal.SIGKILL)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
