"""The TensorFlow Serving directory layout: numbered versions that appear atomically.

TF Serving (``--model_base_path``) and our server watch ``export_base/`` and load every
directory whose name is an integer, as the version of that number. A version is therefore
written into a sibling staging directory whose name is not an integer (``.tmp-<version>-<hex>``,
which watchers ignore) and then renamed into place: a watcher sees either no version or a
complete one, never a half-written SavedModel. A killed writer leaves only a staging directory
behind, which no watcher loads and no later export reuses.
"""
import contextlib
import dataclasses
import errno
import operator
import os
import secrets
import shutil


def version_directories(export_base):
    """{version number: its directory} of the integer-named subdirectories of `export_base`.

    A zero-padded name ("007") is version 7, as TF Serving reads it, and is served from that
    folder; if "7" exists too, "7" is the one.
    """
    if not os.path.isdir(export_base):
        return {}
    found = {}
    for name in sorted(os.listdir(export_base), key=lambda n: (len(n), n), reverse=True):
        if name.isascii() and name.isdigit() and os.path.isdir(os.path.join(export_base, name)):
            found[int(name)] = os.path.join(export_base, name)  # the shortest name is written last
    return dict(sorted(found.items()))


def existing_versions(export_base):
    """Returns the sorted version numbers (integer-named subdirectories) under `export_base`."""
    return list(version_directories(export_base))


def next_version(export_base):
    """Returns 1 + the highest existing version under `export_base`, or 1 if there is none."""
    versions = existing_versions(export_base)
    return versions[-1] + 1 if versions else 1


@dataclasses.dataclass(frozen=True)
class StagedVersion:
    """A version being written: fill `staging_dir`; it becomes `final_dir` on success."""

    version: int
    staging_dir: str
    final_dir: str


@contextlib.contextmanager
def staged_version_dir(export_base, version=None):
    """Context manager that publishes one new version directory atomically.

    Yields a `StagedVersion` whose `staging_dir` (an empty directory beside the final one)
    the caller fills. When the block exits normally the staging directory is renamed to
    `export_base/<version>`; when it raises, the staging directory is removed and the
    exception propagates.

    Args:
      export_base: the model's base path (TF Serving's --model_base_path); created if missing.
      version: a non-negative int, or None for `next_version(export_base)`.

    Raises:
      FileExistsError: `export_base/<version>` already exists.
    """
    version = next_version(export_base) if version is None else checked_version(version)
    os.makedirs(export_base, exist_ok=True)
    final_dir = os.path.join(export_base, str(version))
    _refuse_existing(final_dir)
    # os.mkdir (not tempfile.mkdtemp, which makes it 0700) so the published version gets the
    # usual umask-based permissions and a server running as another user can read it.
    staging_dir = os.path.join(export_base, f".tmp-{version}-{secrets.token_hex(4)}")
    os.mkdir(staging_dir)
    try:
        yield StagedVersion(version, staging_dir, final_dir)
        _publish(staging_dir, final_dir)
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise


def checked_version(version, what="version"):
    """Returns `version` as an int, or raises naming `what` unless it is a non-negative integer.

    Raises:
      TypeError: not an integer (bools and strings included).
      ValueError: negative.
    """
    if isinstance(version, bool):
        raise TypeError(f"{what} must be a non-negative integer, got {version!r}")
    try:
        version = operator.index(version)
    except TypeError:
        raise TypeError(f"{what} must be a non-negative integer, got {version!r}") from None
    if version < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {version}")
    return version


def _refuse_existing(final_dir):
    if os.path.lexists(final_dir):
        raise FileExistsError(
            errno.EEXIST, f"version directory {final_dir} already exists; pass another version "
            "or version=None for the next free one", final_dir)


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
