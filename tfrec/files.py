"""Files and folders written whole or not at all."""
import contextlib
import errno
import os
import secrets
import stat

__all__ = ["fsync_path", "replaced_atomically", "synced_tree"]


@contextlib.contextmanager
def replaced_atomically(path, mode="w"):
    """A file to write (`mode` "w", UTF-8 text, or "wb") that becomes `path` only when written whole.

    It is written beside `path`, flushed to disk and renamed into it, so a crash or a full disk
    mid-write leaves the file as it was, never cut short; on an error the staged file is removed.
    Each call stages under its own name (the workers of a cluster may write the same file), with
    the umask's permissions, so a server running as another user can read the result.
    """
    staged = f"{path}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        with open(staged, mode.replace("w", "x"), **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) \
                as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staged, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(staged)


def synced_tree(folder):
    """Flushes every file and folder under `folder`, and `folder` itself, to disk: call it
    before renaming a folder into place. Without it the rename may reach the disk before the
    data of the files it names, and a crash right after leaves the new name holding empty or
    cut files. Only regular files are flushed: opening a FIFO would wait for a writer for good,
    and a link's target lies elsewhere."""
    for parent, _, names in os.walk(folder, topdown=False):
        for name in names:
            path = os.path.join(parent, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                fsync_path(path)
        fsync_path(parent)


def fsync_path(path):
    """Flushes the file or folder `path` to disk (a folder's: the names renamed into it).

    Some network and FUSE file systems cannot flush a folder and refuse with EINVAL (fsync(2):
    "fd is bound to a special file which does not support synchronization"); there the renames
    are as durable as the file system makes them, and the write goes on. A file they cannot
    flush still fails the write.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP) or not os.path.isdir(path):
            raise
    finally:
        os.close(fd)
