"""Files written whole or not at all."""
import contextlib
import os
import secrets

__all__ = ["replaced_atomically"]


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
