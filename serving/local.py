"""Run the model server as a subprocess on free local ports, for tests, demos and benchmarks.

    with LocalServer(model_base_path="exports/ranker", model_name="ranker") as server:
        with Client(server.grpc_target) as client:
            client.predict("ranker", {...})

The server is `serving.server.main` in a new interpreter (`python -m serving.local_child`, the
same Python), so everything it does is real: gRPC and REST over 127.0.0.1, model polling, warm-up,
SIGTERM shutdown.
"""
import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time

_GRPC_READY = "Running gRPC ModelServer at"
_REST_READY = "Exporting HTTP/REST API at:"
_LOG_LINES_KEPT = 5000


def free_port(host="127.0.0.1"):
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalServer:
    """The model server in a subprocess, started on enter and stopped on exit.

    Args:
      model_base_path / model_name: serve one model (like tensorflow_model_server's flags).
      model_config_file: serve the models of a text-format ModelServerConfig instead.
      rest: also start the REST API.
      poll_wait_seconds: --file_system_poll_wait_seconds.
      extra_args: more server flags, e.g. ("--enable_batching",).
      startup_timeout: seconds to wait for the readiness lines.

    Attributes (once started): `grpc_target` ("127.0.0.1:PORT"), `rest_url`
    ("http://127.0.0.1:PORT", None without REST), `pid`, `process`. `logs()` returns what the
    server printed. On Linux the server is stopped if the thread that started it dies.
    """

    def __init__(self, model_base_path=None, model_name=None, model_config_file=None,
                 rest=True, poll_wait_seconds=1, extra_args=(), startup_timeout=120):
        if not model_base_path and not model_config_file:
            raise ValueError("LocalServer needs model_base_path or model_config_file")
        self.model_base_path = model_base_path
        self.model_name = model_name
        self.model_config_file = model_config_file
        self.rest = rest
        self.poll_wait_seconds = poll_wait_seconds
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.process = None
        self.grpc_target = None
        self.rest_url = None
        self._lines = collections.deque(maxlen=_LOG_LINES_KEPT)
        self._lines_lock = threading.Lock()
        self._readers = []

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def _command(self, grpc_port, rest_port):
        command = [sys.executable, "-m", "serving.local_child", str(os.getpid()), f"--port={grpc_port}",
                   "--host=127.0.0.1", f"--rest_api_port={rest_port}",
                   f"--file_system_poll_wait_seconds={self.poll_wait_seconds}"]
        if self.model_config_file:
            command.append(f"--model_config_file={self.model_config_file}")
        else:
            command.append(f"--model_base_path={self.model_base_path}")
            if self.model_name:
                command.append(f"--model_name={self.model_name}")
        return command + list(self.extra_args)

    def _read(self, stream, prefix):
        for line in iter(stream.readline, ""):
            with self._lines_lock:
                self._lines.append(prefix + line.rstrip("\n"))
        stream.close()

    def logs(self):
        """Everything the server printed since it was last started (stdout and stderr lines,
        interleaved)."""
        with self._lines_lock:
            return "\n".join(self._lines)

    def start(self):
        """Starts the server and waits until it is ready; retries if a port got taken.

        Raises RuntimeError if this server is running already (stop() it first): a second
        process would be left running, holding its ports, with nothing to stop it."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"this LocalServer is running already (pid {self.process.pid}, "
                               f"gRPC {self.grpc_target}): stop() it before starting it again")
        for attempt in range(3):
            with self._lines_lock:  # the readiness lines looked for must be this start's
                self._lines.clear()
            try:
                return self._start_once()
            except RuntimeError:
                if attempt == 2 or "cannot bind" not in self.logs():
                    raise

    def _start_once(self):
        grpc_port = free_port()
        rest_port = free_port() if self.rest else 0
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            self._command(grpc_port, rest_port), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env)
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, ""), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, ""), daemon=True)]
        for reader in self._readers:
            reader.start()
        self._wait_ready()
        self.grpc_target = f"127.0.0.1:{grpc_port}"
        self.rest_url = f"http://127.0.0.1:{rest_port}" if self.rest else None
        return self

    def _wait_ready(self):
        deadline = time.monotonic() + self.startup_timeout
        while True:
            text = self.logs()
            if _GRPC_READY in text and (not self.rest or _REST_READY in text):
                return
            if self.process.poll() is not None:
                for reader in self._readers:
                    reader.join(timeout=5)
                raise RuntimeError(
                    f"The model server exited with code {self.process.returncode} before it "
                    f"was ready. Its last output:\n{self._tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"The model server was not ready after {self.startup_timeout} s. Its "
                    f"last output:\n{self._tail()}")
            time.sleep(0.1)

    def _tail(self, lines=40):
        return "\n".join(self.logs().splitlines()[-lines:])

    def stop(self, timeout=30):
        """SIGTERM, wait up to `timeout` s, then SIGKILL; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for reader in self._readers:
            reader.join(timeout=5)
        return self.process.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()
