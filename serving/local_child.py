"""`python -m serving.local_child PARENT_PID SERVER_FLAGS...`: the process `LocalServer` starts.

It runs `serving.server.main(SERVER_FLAGS)` after asking Linux to SIGTERM it when the thread
that started it dies, so a crashed or killed test run leaves no orphan servers behind.
"""
import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid):
    """Linux: have the kernel SIGTERM this process when the thread that started it dies.

    Done here, after exec, not in a `preexec_fn`: that makes `subprocess` fork instead of
    vfork, and grpcio (>= 1.81) runs its fork handlers in such a child, which then dies of
    SIGSEGV or SIGABRT ("epoll_wait error: Bad file descriptor") before its exec, a few starts
    in a hundred when the parent uses gRPC (grpc/grpc#43055)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before the prctl
        sys.exit(1)


def main(argv):
    if sys.platform.startswith("linux"):
        _die_with_parent(int(argv[0]))
    from serving import server  # after the prctl: importing TensorFlow takes seconds
    from serving.process import exit_process

    exit_process(server.main(argv[1:]))


if __name__ == "__main__":
    main(sys.argv[1:])
