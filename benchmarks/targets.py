"""The servers the benchmarks talk to, each in a temp dir, on free 127.0.0.1 ports, pinned to a core.

Pinning (2 cores): the *proxy under test* (lingo, nginx-as-proxy, haproxy) gets a core of its own;
the load generator, the backend and this harness share the other. So the work on the load core per
request is the same for every target (one client request, one backend answer), and a proxied figure
that falls short of the direct one measures the proxy, not a fight for CPU with the client.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import orjson

#: Body every load generator POSTs: a small chat completion.
REQUEST = {
    "model": "bench",
    "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
    "max_tokens": 16,
}
#: What the nginx backend answers to everything: a small, fixed chat completion.
RESPONSE = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 0,
    "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
}
PATH = "/v1/chat/completions"


def _cores() -> tuple[set[int], set[int]]:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return set(cores), set(cores)
    return {cores[0]}, {cores[1]}


#: Load generator, backends and the harness run here.
LOAD_CORES, PROXY_CORES = _cores()
PINNING = (
    f"load generator + backend + harness on CPU {','.join(map(str, sorted(LOAD_CORES)))}; "
    f"proxy under test on CPU {','.join(map(str, sorted(PROXY_CORES)))}"
)


def raise_nofile() -> None:
    """Soft open-files limit up to the hard one (10,000 held connections need it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pin(cores: set[int], pid: int = 0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.sched_setaffinity(pid, cores)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_ok(
    url: str, timeout: float = 30.0, process: subprocess.Popen | None = None, any_status: bool = False
) -> None:
    """Wait until `url` answers 200 (any HTTP answer with `any_status`) or `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode} before {url} answered")
        status = http_status(url)
        if status == 200 or (any_status and status is not None):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


@dataclass
class Server:
    """A started server process and the URL clients use."""

    name: str
    url: str
    process: subprocess.Popen
    log: Path
    extra: dict = field(default_factory=dict)

    def stop(self, grace: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _started(server: Server, url: str, any_status: bool = False) -> Server:
    """`server` once `url` (a path on it, or a full URL) answers; stopped if it never does."""
    try:
        wait_ok(url if "://" in url else server.url + url, 30, server.process, any_status)
    except BaseException:
        server.stop()
        raise
    return server


def spawn(argv: list[str], log: Path, cores: set[int], env: dict[str, str] | None = None) -> subprocess.Popen:
    def prepare() -> None:
        pin(cores)
        raise_nofile()

    with open(log, "ab") as output:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=prepare,
        )


_NGINX = """\
worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 20000; multi_accept on; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 120s;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
{body}
}}
"""

_NGINX_BACKEND = """\
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ default_type application/json; return 200 '{response}'; }}
  }}"""

_NGINX_PROXY = """\
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 512; keepalive_requests 100000000; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering {buffering};
    }}
  }}"""

_HAPROXY = """\
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend bench
  bind 127.0.0.1:{port}
  default_backend backend
backend backend
  server backend 127.0.0.1:{backend}
"""


def _nginx(name: str, workdir: Path, body: str, port: int, cores: set[int]) -> Server:
    directory = workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "nginx.conf"
    config.write_text(_NGINX.format(dir=directory, body=body))
    log = directory / "stderr.log"
    process = spawn(
        ["nginx", "-e", str(directory / "error.log"), "-p", str(directory), "-c", str(config)], log, cores
    )
    return _started(Server(name, f"http://127.0.0.1:{port}", process, log), "/", any_status=True)


def nginx_backend(workdir: Path) -> Server:
    """nginx answering every request 200 with `RESPONSE`: a backend far faster than any proxy."""
    port = free_port()
    response = orjson.dumps(RESPONSE).decode()
    return _nginx("backend", workdir, _NGINX_BACKEND.format(port=port, response=response), port, LOAD_CORES)


def nginx_proxy(workdir: Path, backend: Server, buffering: bool = True) -> Server:
    """nginx `proxy_pass` to `backend`, one worker, upstream keep-alive; unbuffered for streaming."""
    port = free_port()
    backend_port = backend.url.rsplit(":", 1)[1]
    body = _NGINX_PROXY.format(port=port, backend=backend_port, buffering="on" if buffering else "off")
    name = "nginx-proxy" if buffering else "nginx-proxy-unbuffered"
    return _nginx(name, workdir, body, port, PROXY_CORES)


def haproxy(workdir: Path, backend: Server) -> Server:
    """haproxy, one thread, connection reuse to `backend`."""
    directory = workdir / "haproxy"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "haproxy.cfg"
    config.write_text(_HAPROXY.format(port=port, backend=backend.url.rsplit(":", 1)[1]))
    log = directory / "stderr.log"
    process = spawn(["haproxy", "-db", "-f", str(config)], log, PROXY_CORES)
    return _started(Server("haproxy", f"http://127.0.0.1:{port}", process, log), "/", any_status=True)


#: Runs `lingo serve` on the default asyncio loop (the CLI installs uvloop's policy otherwise).
_NO_UVLOOP = (
    "import sys, lingo.cli as cli\n"
    "assert hasattr(cli, '_install_uvloop'), 'lingo.cli._install_uvloop is gone'\n"
    "cli._install_uvloop = lambda: None\n"
    "sys.exit(cli.main(['serve']))\n"
)


def lingo(name: str, workdir: Path, models: dict, *, uvloop: bool = True, env: dict | None = None) -> Server:
    """`lingo serve` on the local platform with `models` as its models file, on free ports."""
    directory = workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    models_file = directory / "models.yaml"
    models_file.write_text(orjson.dumps(models).decode())  # JSON is YAML
    ports = {key: free_port() for key in ("proxy", "health", "metrics", "stats")}
    settings = {
        "LINGO_PLATFORM": "local",
        "LINGO_MODELS_FILE": str(models_file),
        "LINGO_PROXY_ADDRESS": f"127.0.0.1:{ports['proxy']}",
        "HEALTH_PROBE_BIND_ADDRESS": f"127.0.0.1:{ports['health']}",
        "METRICS_BIND_ADDRESS": f"127.0.0.1:{ports['metrics']}",
        "LINGO_STATS_ADDRESS": f"127.0.0.1:{ports['stats']}",
        "LINGO_LOG_LEVEL": "warning",
        "LINGO_LOG_DIR": str(directory / "replicas"),
        "LINGO_SHUTDOWN_GRACE": "5s",
        "LINGO_SHUTDOWN_DELAY": "0s",  # nothing balances onto a benchmark target
        **(env or {}),
    }
    argv = [sys.executable, "-m", "lingo", "serve"] if uvloop else [sys.executable, "-c", _NO_UVLOOP]
    log = directory / "stderr.log"
    process = spawn(argv, log, PROXY_CORES, settings)
    server = Server(
        name,
        f"http://127.0.0.1:{ports['proxy']}",
        process,
        log,
        {"metrics": f"http://127.0.0.1:{ports['metrics']}/metrics"},
    )
    return _started(server, f"http://127.0.0.1:{ports['health']}/readyz")


def static_models(backend_url: str) -> dict:
    """A models file routing model `bench` to one static endpoint, with no per-endpoint cap."""
    return {"models": [{"name": "bench", "endpoints": [backend_url], "concurrency": 100000}]}


def fake_model(workdir: Path, *flags: str) -> Server:
    """`lingo fake-model` with `flags`, on the load core (it is the backend)."""
    directory = workdir / "fake-model"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [sys.executable, "-m", "lingo", "fake-model", "--port", str(port), *flags]
    log = directory / "stderr.log"
    process = spawn(argv, log, LOAD_CORES)
    return _started(Server("fake-model", f"http://127.0.0.1:{port}", process, log), "/health")


def status_value(pid: int, key: str) -> int:
    """A `kB` figure from /proc/PID/status (VmHWM, VmRSS), in bytes; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
