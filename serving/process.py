"""How a process of this package ends once its work is done: at once, its logs flushed."""
import logging
import os
import sys


def exit_process(status):
    """Ends the process now with `status` (None is 0), its logs and standard streams flushed: for
    a process whose work is done, as when the server's `main` has returned (every thread it started
    has stopped, or is stuck in a read) or a `tfrec` command has (what it wrote is closed). The
    interpreter's own teardown of TensorFlow would take about a second more (0.9 s after a bare
    `import tensorflow`), which every restart, rolling update and scripted command would wait for."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing left to write to
            pass
    os._exit(0 if status is None else int(status))
