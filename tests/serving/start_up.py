"""Start-up of the model server that is expected to fail: as a process, or in this process."""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import subprocess
import sys

from serving.server import main

REPO = __file__.rsplit("/tests/", 1)[0]


def run_server(*flags):
    """`python -m serving.server FLAGS` expected to stop at start-up: (exit code, output)."""
    done = subprocess.run([sys.executable, "-m", "serving.server", "--port=0", *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr


def start_in_process(capsys, caplog, *flags):
    """`serving.server.main(FLAGS)` in this process, for checks of start-up failures that come
    before any model loads: (exit code, output), as run_server gives them without a process's
    ~5 s of TensorFlow import."""
    try:
        code = main(["--port=0", *flags])
    except SystemExit as stopped:  # argparse's usage errors
        code = stopped.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err + caplog.text
