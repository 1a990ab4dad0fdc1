import feature_columns._legacy_keras  # noqa: F401

import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

import exporters
from exporters import layout, warmup

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Exports the tiny model, but SIGKILLs itself the moment the warm-up file is written: the
# SavedModel is complete in the staging directory and the rename has not happened yet.
EXPORT_THEN_DIE = textwrap.dedent("""
    import os, signal, sys
    import exporters
    from exporters import warmup
    from tests.exporters.tiny_model import build_tiny_model

    write_warmup_file = warmup.write_warmup_file

    def write_then_die(saved_model_dir, logs):
        write_warmup_file(saved_model_dir, logs)
        os.kill(os.getpid(), signal.SIGKILL)

    warmup.write_warmup_file = write_then_die
    exporters.export_saved_model(build_tiny_model(), sys.argv[1])
    sys.exit("the export finished although it should have been killed")
""")

# Opens a staging directory, prints its path and keeps writing it until a line comes on stdin.
HOLD_STAGING_DIR = textwrap.dedent("""
    import sys
    from exporters import layout

    with layout.staged_version_dir(sys.argv[1], int(sys.argv[2])) as staged:
        print(staged.staging_dir, flush=True)
        sys.stdin.readline()
""")


def start_writer(export_base, version):
    """A process writing `version` under `export_base`; returns (process, its staging dir)."""
    writer = subprocess.Popen([sys.executable, "-c", HOLD_STAGING_DIR, str(export_base), str(version)],
                              cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    staging_dir = writer.stdout.readline().strip()
    assert os.path.isdir(staging_dir), f"the writer exited with {writer.wait()}"
    return writer, staging_dir


def test_killed_export_leaves_no_version_and_the_next_export_removes_it(tiny_model, tmp_path):
    export_base = tmp_path / "tiny"
    child = subprocess.run([sys.executable, "-c", EXPORT_THEN_DIE, str(export_base)],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr

    (staging,) = os.listdir(export_base)
    assert staging.startswith(".tmp-1-")
    # It died with a complete-looking SavedModel in the staging directory, which no server
    # loads because the name is not an integer.
    assert os.path.isfile(export_base / staging / "saved_model.pb")
    assert exporters.existing_versions(export_base) == []

    version_dir = exporters.export_saved_model(tiny_model, export_base)
    assert version_dir == str(export_base / "1")
    assert os.listdir(export_base) == ["1"]  # the killed writer's staging directory is gone
    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    assert set(signature.structured_outputs) == {"ctr", "cvr"}


def test_failed_export_removes_its_staging_directory(tiny_model, tmp_path, monkeypatch):
    def disk_full(saved_model_dir, logs):
        raise OSError("No space left on device")

    monkeypatch.setattr(warmup, "write_warmup_file", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        exporters.export_saved_model(tiny_model, tmp_path / "tiny")
    assert os.listdir(tmp_path / "tiny") == []


def test_an_export_base_that_is_a_file_is_refused_naming_it(tiny_model, tmp_path):
    base = tmp_path / "tiny"
    base.write_text("not a folder")  # was os.makedirs' "[Errno 17] File exists"
    with pytest.raises(NotADirectoryError, match=r"the export base '.*tiny' is a file; it must be a folder \(TF "
                                                 r"Serving's --model_base_path\), whose subfolders are the versions"):
        exporters.export_saved_model(tiny_model, str(base))
    assert base.read_text() == "not a folder"


def test_an_export_base_that_is_a_version_folder_is_refused_naming_it(tiny_model, exported):
    """A version folder passed as the base (exports/tiny/1) got a version 1 inside it, where no server
    looks: the export seemed to succeed and the served model never changed."""
    with pytest.raises(ValueError, match=r"the export base '.*tiny/1' holds a saved_model.pb: it is a version folder, "
                                         r"not the folder of versions \(TF Serving's --model_base_path\); pass its parent"):
        exporters.export_saved_model(tiny_model, exported)
    assert sorted(os.listdir(exported)) == ["assets", "assets.extra", "fingerprint.pb", "saved_model.pb", "variables"]


def test_a_killed_writers_staging_directory_is_removed_by_the_next_export(tmp_path, caplog):
    writer, staging_dir = start_writer(tmp_path, 1)
    writer.kill()
    assert writer.wait(timeout=60) == -signal.SIGKILL
    assert os.path.isdir(staging_dir)

    with caplog.at_level(logging.INFO, logger="exporters.layout"):
        with layout.staged_version_dir(tmp_path) as staged:
            assert staged.version == 1
    assert os.listdir(tmp_path) == ["1"]
    assert f"removing {staging_dir}, left by an export that was killed" in caplog.text


def test_a_live_writers_staging_directory_is_left_alone(tmp_path, caplog):
    writer, staging_dir = start_writer(tmp_path, 1)
    try:
        with caplog.at_level(logging.INFO, logger="exporters.layout"):
            with layout.staged_version_dir(tmp_path, 2):
                pass
        assert os.path.isdir(staging_dir)
        assert caplog.records == []
    finally:
        writer.communicate("done\n", timeout=60)
    assert writer.returncode == 0
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_a_staging_directory_being_written_by_this_process_is_left_alone(tmp_path):
    with layout.staged_version_dir(tmp_path, 1) as first:
        with layout.staged_version_dir(tmp_path, 2):
            assert os.path.isdir(first.staging_dir)
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_staging_directories_of_unknown_writers_are_left_with_one_warning_each(tmp_path, caplog):
    other_host = tmp_path / ".tmp-1-0123abcd"
    other_host.mkdir()
    (other_host / ".staging-owner").write_text("elsewhere")
    no_owner = tmp_path / ".tmp-2-89abcdef"  # e.g. written before owners were recorded
    no_owner.mkdir()
    not_ours = tmp_path / ".tmp-3-staging"  # not named like ours: never touched
    not_ours.mkdir()

    with caplog.at_level(logging.WARNING, logger="exporters.layout"):
        layout.remove_abandoned_staging_dirs(tmp_path)
        layout.remove_abandoned_staging_dirs(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [".tmp-1-0123abcd", ".tmp-2-89abcdef", ".tmp-3-staging"]
    assert [record.getMessage() for record in caplog.records] == [
        f"leaving staging directory {other_host} in place (its writer ran on host 'elsewhere', "
        "whose lock this host may not see); remove it by hand once no export is writing it",
        f"leaving staging directory {no_owner} in place (it records no writer); remove it by "
        "hand once no export is writing it",
    ]


def test_a_version_is_flushed_to_disk_before_it_is_renamed_into_place(tiny_model, tmp_path, monkeypatch):
    """Every file and folder of the staged SavedModel is fsynced before the rename, and the base
    folder after it: otherwise a crash right after an export could leave a published version of
    empty or cut files, which a server would try to load."""
    events = []
    fsync, rename = os.fsync, os.rename

    def recorded_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recorded_rename(source, target):
        events.append(("rename", str(source), str(target)))
        rename(source, target)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "rename", recorded_rename)
    version_dir = exporters.export_saved_model(tiny_model, tmp_path / "tiny")

    [renamed] = [index for index, event in enumerate(events) if event[0] == "rename" and event[2] == version_dir]
    staging_dir = events[renamed][1]
    synced_before = {path for kind, path in events[:renamed] if kind == "fsync"}
    written = {os.path.join(staging_dir, os.path.relpath(os.path.join(parent, name), version_dir))
               for parent, folders, files in os.walk(version_dir) for name in folders + files} | {staging_dir}
    assert len(written) > 5 and written <= synced_before
    assert ("fsync", str(tmp_path / "tiny")) in events[renamed:]


@pytest.mark.parametrize("refused", ["folder", "file"])
def test_a_file_system_that_cannot_flush_a_folder_still_takes_exports(refused, tiny_model, tmp_path, monkeypatch):
    """Some network and FUSE file systems refuse a folder's fsync with EINVAL: an export there
    still publishes its version. A file that cannot be flushed still fails the export, and
    publishes nothing."""
    fsync = os.fsync

    def fsync_refusing(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}") == (refused == "folder"):
            raise OSError(errno.EINVAL, "Invalid argument")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_refusing)
    if refused == "folder":
        version_dir = exporters.export_saved_model(tiny_model, tmp_path / "tiny")
        assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
    else:
        with pytest.raises(OSError, match="Invalid argument"):
            exporters.export_saved_model(tiny_model, tmp_path / "tiny")
        assert [name for name in os.listdir(tmp_path / "tiny") if not name.startswith(".")] == []
