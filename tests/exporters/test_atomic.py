import feature_columns._legacy_keras  # noqa: F401

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

import exporters
from exporters import warmup

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


def test_killed_export_leaves_no_version_and_a_later_export_works(tiny_model, tmp_path):
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
    assert exporters.existing_versions(export_base) == [1]
    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    assert set(signature.structured_outputs) == {"ctr", "cvr"}


def test_failed_export_removes_its_staging_directory(tiny_model, tmp_path, monkeypatch):
    def disk_full(saved_model_dir, logs):
        raise OSError("No space left on device")

    monkeypatch.setattr(warmup, "write_warmup_file", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        exporters.export_saved_model(tiny_model, tmp_path / "tiny")
    assert os.listdir(tmp_path / "tiny") == []
