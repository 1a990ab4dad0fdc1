"""Plain-HTTP and polling helpers shared by the serving tests (no client library in between)."""
import json
import time
import urllib.error
import urllib.request


def rest_call(server, path, body=None, timeout=30):
    """(HTTP status, decoded JSON) of GET `path` (body None) or POST of `body` (bytes as they
    are, anything else as JSON) to a LocalServer's REST port."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(server.rest_url + path, data=data,
                                     method="GET" if data is None else "POST",
                                     headers={} if data is None else
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for(condition, timeout=30, interval=0.1, what="condition"):
    """Polls `condition()` until it returns something true, and returns that; `what` names it
    in the failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout} s")


def process_running(pid):
    """Whether process `pid` exists and is not a zombie (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
