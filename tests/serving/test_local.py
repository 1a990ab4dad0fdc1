"""LocalServer's failure reporting: a server that cannot start is an error with its output."""
import pytest

from serving import LocalServer


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
