"""LocalServer's failure reporting (a server that cannot start is an error with its output) and
its lifetime (a server does not outlive the process that started it)."""
import subprocess
import sys

import pytest

from serving import LocalServer
from tests.serving.rest_helpers import process_running, wait_for


def test_server_that_exits_early_raises_with_its_error_output(tmp_path):
    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "m" base_path: "/nowhere" '
                      'model_platform: "pytorch" } }')
    server = LocalServer(model_config_file=str(config), rest=False)
    with pytest.raises(RuntimeError) as info:
        server.start()
    message = str(info.value)
    assert "exited with code 1 before it was ready" in message
    assert "Model m has model_platform 'pytorch'" in message
    assert server.process.returncode == 1


def test_local_server_needs_a_model():
    with pytest.raises(ValueError, match="model_base_path or model_config_file"):
        LocalServer()


_PARENT = """
import sys, time
from serving import LocalServer
server = LocalServer(model_base_path=sys.argv[1], model_name="toy", rest=False).start()
print(server.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_server_stops_when_the_process_that_started_it_is_killed(saved_models):
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(saved_models / "toy")],
                              stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
        assert process_running(server_pid)
    finally:
        parent.kill()
        parent.wait()
    wait_for(lambda: not process_running(server_pid), 30, 0.2,
             what="the server gone with the process that started it")


def test_a_stopped_server_starts_again_ready_and_a_running_one_is_not_started_twice(saved_models):
    from serving import Client

    server = LocalServer(model_base_path=str(saved_models / "toy"), model_name="toy", rest=False)
    try:
        first = server.start().pid
        with pytest.raises(RuntimeError, match=f"running already \\(pid {first}.*stop\\(\\) it"):
            server.start()
        assert server.pid == first
        server.stop()
        server.start()
        assert server.pid != first and not process_running(first)
        # start() returned once this process was ready, not on the first run's log lines.
        with Client(server.grpc_target, retries=0) as client:
            assert client.status("toy")
    finally:
        server.stop()
