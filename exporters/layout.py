"""The TensorFlow Serving directory layout: numbered versions that appear atomically.

TF Serving (``--model_base_path``) and our server watch ``export_base/`` and load every
directory whose name is an integer, as the version of that number. A version is therefore
written into a sibling staging directory whose name is not an integer (``.tmp-<version>-<hex>``,
which watchers ignore) and then renamed into place: a watcher sees either no version or a
complete one, never a half-written SavedModel. A killed writer leaves only a staging directory
behind, which no watcher loads and which the next export into the same base removes (see
`remove_abandoned_staging_dirs`).
"""
import contextlib
import contextvars
import dataclasses
import errno
import fcntl
import logging
import operator
import os
import re
import secrets
import shutil
import socket

from tfrec.files import fsync_path, synced_tree

logger = logging.getLogger(__name__)

# What `staged_version_dir` names its staging directories; nothing else is ever removed.
_STAGING_NAME = re.compile(r"\.tmp-\d+-[0-9a-f]{8}")
# Inside a staging directory while it is written: the writer's hostname.
_OWNER_FILE = ".staging-owner"
# Staging directories already warned of as left in place, so a long-lived process warns once.
_warned_about = set()
# Inside `published_together`: the staged versions it publishes when it ends.
_published_together = contextvars.ContextVar("published_together", default=None)
# TF Serving reads version numbers as int64.
MAX_VERSION = 2**63 - 1


def version_directories(export_base):
    """{version number: its directory} of the integer-named subdirectories of `export_base`.

    A zero-padded name ("007") is version 7, as TF Serving reads it, and is served from that
    folder; if "7" exists too, "7" is the one. A number beyond int64 is no version: TF Serving
    cannot read it as one and ignores the folder.
    """
    names = _version_names(export_base)
    found = {}
    for name in sorted(names, key=lambda n: (len(n), n), reverse=True):
        if os.path.isdir(os.path.join(export_base, name)):
            found[names[name]] = os.path.join(export_base, name)  # the shortest name is written last
    return dict(sorted(found.items()))


def _version_names(export_base):
    """{name: version number} of the entries of `export_base` (folders or not) named as a
    version: ASCII digits, zero-padded or not, within int64."""
    if not os.path.isdir(export_base):
        return {}
    return {name: int(name) for name in os.listdir(export_base)
            if name.isascii() and name.isdigit() and int(name) <= MAX_VERSION}


def existing_versions(export_base):
    """Returns the sorted version numbers (integer-named subdirectories) under `export_base`."""
    return list(version_directories(export_base))


def next_version(export_base):
    """Returns 1 + the highest version under `export_base`, or 1 if there is none. An entry
    named as a version that is no folder (a file "3") counts too: its number cannot be written."""
    return max(_version_names(export_base).values(), default=0) + 1


@dataclasses.dataclass(frozen=True)
class StagedVersion:
    """A version being written: fill `staging_dir`; it becomes `final_dir` on success."""

    version: int
    staging_dir: str
    final_dir: str


@contextlib.contextmanager
def staged_version_dir(export_base, version=None):
    """Context manager that publishes one new version directory atomically.

    First removes the staging directories that killed writers left in `export_base`
    (`remove_abandoned_staging_dirs`). Then yields a `StagedVersion` whose `staging_dir` (a
    directory beside the final one, empty but for a hidden owner file removed before
    publishing) the caller fills. When the block exits normally the staging directory is
    renamed to `export_base/<version>` (inside `published_together`, when that block ends);
    when it raises, the staging directory is removed and the exception propagates.

    Args:
      export_base: the model's base path (TF Serving's --model_base_path); created if missing.
      version: a non-negative int, or None for `next_version(export_base)`.

    Raises:
      FileExistsError: `export_base/<version>` already exists.
      NotADirectoryError: `export_base` is a file.
      ValueError: `export_base` is itself a version (holds a saved_model.pb).
    """
    if os.path.exists(export_base) and not os.path.isdir(export_base):
        raise NotADirectoryError(f"the export base {export_base!r} is a file; it must be a folder (TF Serving's "
                                 "--model_base_path), whose subfolders are the versions")
    if os.path.exists(os.path.join(export_base, "saved_model.pb")):
        # e.g. exports/din/3: the new version would go inside it, where no server looks for one
        raise ValueError(f"the export base {export_base!r} holds a saved_model.pb: it is a version folder, not the "
                         "folder of versions (TF Serving's --model_base_path); pass its parent")
    version = checked_version(next_version(export_base) if version is None else version)
    os.makedirs(export_base, exist_ok=True)
    final_dir = os.path.join(export_base, str(version))
    _refuse_existing(final_dir)
    remove_abandoned_staging_dirs(export_base)
    staging_dir, lock = _create_owned_staging_dir(export_base, version)
    staged = (staging_dir, final_dir, lock)
    together = _published_together.get()
    try:
        yield StagedVersion(version, staging_dir, final_dir)
    except BaseException:
        _discard(staged)
        raise
    if together is None:
        _publish_staged(staged)
    else:
        together.append(staged)


@contextlib.contextmanager
def published_together():
    """Holds back every version `staged_version_dir` completes in this block, then publishes
    them all when the block ends, in the order they completed; none when it raises (their
    staging directories are removed) or its process is killed (the next export removes them).

    For versions of several base paths that belong together, such as a retrieval export and its
    brute-force twin, user tower and item vectors: a writer that stops midway publishes none of
    them, rather than some under a version number the others never get.
    """
    pending = []
    token = _published_together.set(pending)
    try:
        yield
    except BaseException:
        for staged in pending:
            _discard(staged)
        raise
    finally:
        _published_together.reset(token)
    for done, staged in enumerate(pending):
        try:
            _publish_staged(staged)
        except BaseException:
            for rest in pending[done + 1:]:
                _discard(rest)
            raise


def _publish_staged(staged):
    """Renames a filled staging directory into place (removed instead if that fails)."""
    staging_dir, final_dir, lock = staged
    try:
        os.remove(os.path.join(staging_dir, _OWNER_FILE))
        synced_tree(staging_dir)  # so a crash after the rename cannot leave a version of empty files
        _publish(staging_dir, final_dir)
        fsync_path(os.path.dirname(final_dir))  # the rename itself
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise
    finally:
        os.close(lock)  # only now, so no cleanup takes the directory for abandoned before


def _discard(staged):
    staging_dir, _, lock = staged
    shutil.rmtree(staging_dir, ignore_errors=True)
    os.close(lock)


def remove_abandoned_staging_dirs(export_base):
    """Removes the staging directories under `export_base` whose writer is dead.

    A writer killed mid-export (SIGKILL, OOM killer, a lost machine) leaves its staging
    directory behind. No watcher loads it, but a daily export job would pile them up, each as
    large as a model, so every export clears its base of them first.

    A writer holds an exclusive flock on its staging directory until it has renamed it, and
    the kernel releases it when the writer dies; it also records its hostname inside. A
    directory is removed only when its lock can be taken here and its writer ran on this host:
    locks are not shared between hosts on every shared filesystem (NFS may keep them local or
    refuse them), so another host's directory, one without a recorded owner (written before
    owners were recorded, or caught between its creation and its owner file) or one whose
    lock cannot be tried is left in place, with one warning naming it.
    """
    for name in sorted(os.listdir(export_base)):
        if _STAGING_NAME.fullmatch(name):
            _remove_if_abandoned(os.path.join(export_base, name))


def _create_owned_staging_dir(export_base, version):
    """Creates a staging directory for `version`, locked as this writer's until the returned
    file descriptor is closed, with this host recorded as its owner. Returns (path, fd)."""
    # os.mkdir (not tempfile.mkdtemp, which makes it 0700) so the published version gets the
    # usual umask-based permissions and a server running as another user can read it.
    staging_dir = os.path.join(export_base, f".tmp-{version}-{secrets.token_hex(4)}")
    os.mkdir(staging_dir)
    lock = os.open(staging_dir, os.O_RDONLY)
    try:
        try:
            # Blocking: a cleanup that listed the directory before this lock holds it for a
            # moment, and finding no owner file yet, leaves it alone.
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:  # a filesystem without locks: cleanups will leave this directory alone
            logger.debug("cannot lock %s; if this export is killed, remove it by hand", staging_dir)
        with open(os.path.join(staging_dir, _OWNER_FILE), "w", encoding="utf-8") as out:
            out.write(socket.gethostname())
    except BaseException:
        os.close(lock)
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise
    return staging_dir, lock


def _remove_if_abandoned(staging_dir):
    """Removes `staging_dir` if its writer is dead, leaves it silently while its writer is
    alive, and warns once when that cannot be told (see `remove_abandoned_staging_dirs`)."""
    try:
        lock = os.open(staging_dir, os.O_RDONLY)
    except FileNotFoundError:
        return  # published or removed meanwhile
    except OSError as error:
        _warn_left_in_place(staging_dir, f"it cannot be opened: {error}")
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass  # its writer is alive and holds the lock
    except OSError as error:
        _warn_left_in_place(staging_dir, f"its lock cannot be tried: {error}")
    else:
        if _still_at(lock, staging_dir):  # otherwise its writer published it before we locked
            _remove_if_written_here(staging_dir)
    finally:
        os.close(lock)


def _remove_if_written_here(staging_dir):
    """Removes the unlocked `staging_dir` if its writer ran on this host, whose locks we see."""
    owner = _recorded_owner(staging_dir)
    if owner is None:
        _warn_left_in_place(staging_dir, "it records no writer")
    elif owner != socket.gethostname():
        _warn_left_in_place(staging_dir, f"its writer ran on host {owner!r}, whose lock this "
                            "host may not see")
    else:
        logger.info("removing %s, left by an export that was killed", staging_dir)
        try:
            shutil.rmtree(staging_dir)
        except OSError as error:
            _warn_left_in_place(staging_dir, f"it cannot be removed: {error}")


def _still_at(fd, path):
    """Whether the directory open as `fd` is still the one named `path`."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _recorded_owner(staging_dir):
    """The hostname a writer recorded in `staging_dir`, or None if it has none."""
    try:
        with open(os.path.join(staging_dir, _OWNER_FILE), encoding="utf-8") as owner_file:
            return owner_file.read()
    except OSError:  # none recorded, or unreadable: either way the writer is unknown
        return None


def _warn_left_in_place(staging_dir, reason):
    if staging_dir not in _warned_about:
        _warned_about.add(staging_dir)
        logger.warning("leaving staging directory %s in place (%s); remove it by hand once no "
                       "export is writing it", staging_dir, reason)


def checked_version(version, what="version"):
    """Returns `version` as an int, or raises naming `what` unless it is a non-negative integer
    that TF Serving can read (at most `MAX_VERSION`).

    Raises:
      TypeError: not an integer (bools and strings included).
      ValueError: negative, or beyond int64.
    """
    if isinstance(version, bool):
        raise TypeError(f"{what} must be a non-negative integer, got {version!r}")
    try:
        version = operator.index(version)
    except TypeError:
        raise TypeError(f"{what} must be a non-negative integer, got {version!r}") from None
    if version < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {version}")
    if version > MAX_VERSION:
        raise ValueError(f"{what} must be a non-negative integer of at most 2**63 - 1, got {version}: TF Serving "
                         "reads versions as int64 and ignores a folder named beyond")
    return version


def _refuse_existing(final_dir):
    """FileExistsError if the version of `final_dir` (`export_base/<version>`) exists: that
    folder, or a zero-padded one ("007" for 7), which servers read as the same version (one
    serving it would never load the new folder)."""
    export_base, name = os.path.split(final_dir)
    existing = final_dir if os.path.lexists(final_dir) else version_directories(export_base).get(int(name))
    if existing is not None:
        raise FileExistsError(
            errno.EEXIST, f"version directory {existing} already exists; pass another version "
            "or version=None for the next free one", existing)


def _publish(staging_dir, final_dir):
    # Checked again because another writer may have published the same version meanwhile;
    # rename would silently replace an empty directory, and fails on a non-empty one.
    _refuse_existing(final_dir)
    try:
        os.rename(staging_dir, final_dir)
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(
                errno.EEXIST, f"version directory {final_dir} already exists", final_dir
            ) from error
        raise
