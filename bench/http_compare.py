"""imagegate over real sockets next to a minimal app and LiteLLM (issue 22, items 3 and 4): a report, never a
gate.

Every candidate is a server process driven over HTTP by keep-alive clients, and all of them call the same
fake OpenAI-compatible upstream (bench/fakes.py, in a process of its own) for real:
- imagegate: the dev stack exactly as `make serve` runs it (bench/local_stack.py's start_stack: Dynoxide
  for DynamoDB where `make install` put it, moto for S3 and SQS), with IMAGEGATE_ROUTES sending dall-e-2
  to the fake upstream; asked for b64_json and for url;
- minimal: bench/apps.py's floor (FastAPI, one consistent GetItem of the key, the upstream call) under
  uvicorn, against the same Dynoxide;
- LiteLLM: pinned (LITELLM_VERSION), installed by this script into build/bench-litellm/ from PyPI when
  missing, run as its proxy with a config sending dall-e-2 to the same fake upstream; it moves no money.
- upstream: the fake itself, called directly, so that a candidate's own overhead is its p50 minus this.

Rounds are interleaved (each round runs every candidate, in a rotated order) and every figure is the
median of per-round ratios to the minimal app measured in the same round: the machine is shared, so the
load average is printed with each round. CPU per request is the server process's user + system time
(/proc/<pid>/stat) over the round's requests; RSS is its resident set (VmRSS) after the rounds.

DynamoDB calls and write units are then counted at the emulator: a second dev server (same table, same
key) and a second minimal app talk to Dynoxide and moto through a counting proxy (bench/capacity.py: the
accounting, by DynamoDB's published rules). From those counts and the timings comes the AWS cost per
million requests at list prices (capacity.Prices, printed), at the template's FunctionMemorySize.

Targets (issue 22, item 4): imagegate's own overhead at c=1 <= LiteLLM's; req/s at c=8 >= LiteLLM's; CPU per
request <= 2x the minimal app's; AWS cost <= $10 per million fast b64 requests. Exit status 0 either way.

    .venv/bin/python bench/http_compare.py [--rounds 5] [--window 60] [--no-litellm]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import capacity
from fakes import LIMITS, MODEL, FakeServer, routes_json
from local_stack import Client, process_tree, run, stack_aws_env, start_stack, stop_stack

ROOT = Path(__file__).resolve().parent.parent
LITELLM_VERSION = "1.80.17"  # the version issue 22's outside measurement ran
LITELLM_VENV = ROOT / "build" / "bench-litellm"
TABLE = "imagegate-bench"  # bench/apps.py's environment() names it too
STARTUP_TIMEOUT_S = 180  # LiteLLM's first start compiles its bytecode
TARGET_CPU_RATIO = 2.0
TARGET_COST = 10.0  # dollars per million fast b64 requests
LAMBDA_FULL_VCPU_MB = 1769  # Lambda gives one full vCPU at 1,769 MB, a share of one below


def body(response_format: str) -> bytes:
    return json.dumps(
        {
            "model": MODEL,
            "prompt": "a lighthouse at dusk",
            "size": "256x256",
            "response_format": response_format,
        }
    ).encode()


# ---- processes ---------------------------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids` (all their threads), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
            total += int(match[1]) if match else 0
    return total / 1024


def drain(stream: Any) -> None:
    """Read a child's pipe to its end in the background: a full pipe would block the child."""
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()


def child(argv: list[str], env: dict[str, str] | None = None, **kwargs: Any) -> tuple[subprocess.Popen, str]:
    """This script in a child process serving something; (process, the URL it printed first)."""
    proc = subprocess.Popen(
        [sys.executable, __file__, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        **kwargs,
    )
    url = proc.stdout.readline().strip() if proc.stdout else ""
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"{argv[0]} did not start: {url!r}")
    drain(proc.stdout)
    return proc, url


def serve_upstream() -> None:
    """The fake upstream, until stdin closes (our parent went away)."""
    server = FakeServer()
    print(server.url, flush=True)
    sys.stdin.read()


def serve_minimal(dynamodb: str, upstream_base: str) -> None:
    """bench/apps.py's minimal app under uvicorn on a free port, against `dynamodb`."""
    import apps
    import uvicorn

    os.environ.update(apps.environment(dynamodb, upstream_base))
    app, _ = apps.minimal()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY: see devserver
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    threading.Thread(
        target=lambda: (sys.stdin.read(), os.kill(os.getpid(), signal.SIGTERM)), daemon=True
    ).start()
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def ensure_litellm() -> Path:
    """LiteLLM's proxy at LITELLM_VERSION in its own venv (installed from PyPI the first time)."""
    binary = LITELLM_VENV / "bin" / "litellm"
    stamp = LITELLM_VENV / f".installed-{LITELLM_VERSION}"
    if binary.exists() and stamp.exists():
        return binary
    print(f"installing LiteLLM {LITELLM_VERSION} into {LITELLM_VENV.relative_to(ROOT)} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)], check=True)
    pip = [
        str(LITELLM_VENV / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]
    subprocess.run([*pip, f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
    stamp.touch()
    return binary


def start_litellm(binary: Path, upstream_base: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    """`litellm --config` on a free port, dall-e-2 routed to the fake upstream; access logs off, as the other
    candidates run without them."""
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream_base}\n"
        "      api_key: sk-bench-fake-upstream\n"
    )
    log_config = workdir / "litellm-logging.json"
    log_config.write_text(
        json.dumps(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {"err": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
                "loggers": {
                    "uvicorn": {"handlers": ["err"], "level": "INFO"},
                    "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
                },
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OPENAI_", "LITELLM_"))}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # offline: its packaged price map, no download
    log = (workdir / "litellm.log").open("w+")
    argv = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", "0"]
    proc = subprocess.Popen(
        [*argv, "--log_config", str(log_config)], env=env, stdout=log, stderr=log, cwd=workdir
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", Path(log.name).read_text())
        if found:
            return proc, f"http://127.0.0.1:{found[1]}"
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"LiteLLM did not start: {Path(log.name).read_text()[-500:]}")


# ---- the counting proxy --------------------------------------------------------------------------------


class CountingProxy:
    """An HTTP proxy in front of an emulator: DynamoDB calls go through a capacity.Meter (operations, read
    and write units), anything else (S3, SQS) is counted by service and method."""

    def __init__(self, target: str, meter: capacity.Meter) -> None:
        import botocore.session

        self.other: dict[str, int] = {}
        address = urlsplit(target)
        local = threading.local()
        lock = threading.Lock()
        reader = botocore.session.get_session().create_client(
            "dynamodb",
            region_name="us-east-1",
            endpoint_url=target,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

        def read(table: str, key: dict[str, Any]) -> dict[str, Any] | None:
            return reader.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")

        def forward(method: str, path: str, headers: dict[str, str], data: bytes) -> tuple[int, list, bytes]:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
            conn.request(method, path, data, headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()

        other = self.other

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _any(self) -> None:
                data = self.rfile.read(int(self.headers.get("content-length") or 0))
                drop = ("connection", "expect", "transfer-encoding")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in drop}
                target_header = self.headers.get("x-amz-target", "")
                answer: dict[str, Any] = {}

                def send() -> tuple[bool, dict[str, Any]]:
                    answer["r"] = forward(self.command, self.path, headers, data)
                    status, _, out = answer["r"]
                    return status == 200, json.loads(out or b"{}") if status == 200 else {}

                if target_header.startswith("DynamoDB_"):
                    meter.observe(target_header.rpartition(".")[2], json.loads(data or b"{}"), send, read)
                else:
                    service = target_header.partition(".")[0] or "S3"
                    name = f"{service} {target_header.rpartition('.')[2] or self.command}"
                    with lock:
                        other[name] = other.get(name, 0) + 1
                    answer["r"] = forward(self.command, self.path, headers, data)
                status, response_headers, out = answer["r"]
                self.send_response_only(status)
                for name, value in response_headers:
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(out)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> dict[str, int]:
        counts = dict(self.other)
        self.other.clear()
        return counts

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- measuring ------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    name: str
    base: str
    key: str
    body: bytes
    pids: Callable[[], list[int]]  # the server's processes (not the emulators a dev server started)
    rounds: list[dict[str, float]] = field(default_factory=list)
    rss: float = 0.0

    def clients(self, n: int) -> list[Client]:
        return [Client(self.base, self.key, self.body) for _ in range(n)]


def p(latencies: list[float], q: int) -> float:
    """The q-th percentile in milliseconds."""
    return statistics.quantiles(latencies, n=100, method="inclusive")[q - 1] * 1000


def measure_round(c: Candidate, window: int, concurrency: int, c1_only: bool = False) -> dict[str, float]:
    one, many = c.clients(1), c.clients(concurrency)
    run(one, 5)  # the connections, after the other candidates' turn
    cpu0 = cpu_seconds(c.pids())
    _, lat1 = run(one, window)
    figures = {"p50_c1": p(lat1, 50), "p95_c1": p(lat1, 95)}
    if not c1_only:
        wall8, lat8 = run(many, window * 4)
        cpu = cpu_seconds(c.pids()) - cpu0
        figures |= {
            "p50_c8": p(lat8, 50),
            "p95_c8": p(lat8, 95),
            "rps_c8": window * 4 / wall8,
            "cpu_ms": cpu / (window * 5) * 1000,
        }
    for client in (*one, *many):
        client.close()
    c.rounds.append(figures)
    return figures


def median_ratio(c: Candidate, floor: Candidate, metric: str) -> float:
    return statistics.median(a[metric] / b[metric] for a, b in zip(c.rounds, floor.rounds, strict=True))


def median(c: Candidate, metric: str) -> float:
    return statistics.median(r[metric] for r in c.rounds)


def overheads(c: Candidate, upstream: Candidate) -> list[float]:
    """Per round, the candidate's p50 at c=1 minus the upstream's own, in ms."""
    return [a["p50_c1"] - b["p50_c1"] for a, b in zip(c.rounds, upstream.rounds, strict=True)]


def overhead(c: Candidate, upstream: Candidate) -> float:
    return statistics.median(overheads(c, upstream))


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class Counts:
    requests: int
    tally: capacity.Tally
    other: dict[str, int]

    def per_request(self, name: str) -> float:
        return self.other.get(name, 0) / self.requests

    def line(self) -> str:
        calls = ", ".join(f"{op} {n / self.requests:.2f}" for op, n in sorted(self.tally.calls.items()))
        return (
            f"DynamoDB calls/request: {calls or 'none'}; write units/request"
            f" {self.tally.write_units / self.requests:.2f}"
            f" (of which index {self.tally.index_units / self.requests:.2f}),"
            f" read units/request {self.tally.read_units / self.requests:.2f}; S3 PUTs/request"
            f" {self.per_request('S3 PUT'):.2f}"
        )


def count(c: Candidate, meter: capacity.Meter, proxies: list[CountingProxy], requests: int) -> Counts:
    """`requests` at concurrency 1 (the meter reads each written item before and after its write)."""
    [client] = c.clients(1)
    run([client], 3)  # warm-up: the limiter's items exist, the clients are built
    meter.reset()
    for proxy in proxies:
        proxy.reset()
    run([client], requests)
    other: dict[str, int] = {}
    for proxy in proxies:
        for name, n in proxy.reset().items():
            other[name] = other.get(name, 0) + n
    client.close()
    return Counts(requests, meter.reset(), other)


def function_memory_mb() -> int:
    """FunctionMemorySize's default in template.yaml: what the synchronous functions run with."""
    text = (ROOT / "template.yaml").read_text()
    match = re.search(r"^  FunctionMemorySize:\n(?:    .*\n)*?    Default: (\d+)", text, re.M)
    return int(match[1]) if match else 1024


def lambda_ms(c: Candidate, memory_mb: int) -> float:
    """A fast request's billed time on Lambda: its wall time here at c=1, with the CPU part stretched to the
    share of a vCPU Lambda gives at `memory_mb` (a full one from 1,769 MB)."""
    stretch = max(0.0, LAMBDA_FULL_VCPU_MB / memory_mb - 1)
    return median(c, "p50_c1") + median(c, "cpu_ms") * stretch


def seed_minimal_key(aws_env: dict[str, str], key: str) -> None:
    """The minimal app looks its key up by the raw key: a copy of imagegate's key item under that name, so
    that both read the same item."""
    import botocore.session

    db = botocore.session.get_session().create_client(
        "dynamodb",
        region_name="us-east-1",
        endpoint_url=aws_env.get("AWS_ENDPOINT_URL_DYNAMODB") or aws_env["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    hashed = {"pk": {"S": f"KEY#{hashlib.sha256(key.encode()).hexdigest()}"}, "sk": {"S": "KEY"}}
    item = db.get_item(TableName=TABLE, Key=hashed, ConsistentRead=True)["Item"]
    db.put_item(TableName=TABLE, Item={**item, "pk": {"S": f"KEY#{key}"}})


# ---- the run ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each: every candidate)")
    parser.add_argument("--window", type=int, default=60, help="requests at c=1 per round; 4x that at c=8")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--count", type=int, default=20, help="requests counted at the emulator, per candidate"
    )
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out (no install)")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-minimal", nargs=2, metavar=("DYNAMODB", "UPSTREAM"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream:
        return serve_upstream()
    if args.serve_minimal:
        return serve_minimal(*args.serve_minimal)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out

    cores = len(os.sched_getaffinity(0))
    print(
        f"HTTP comparison: {args.rounds} interleaved rounds of {args.window} requests at c=1 and"
        f" {args.window * 4} at c={args.concurrency} per candidate; {MODEL} 256x256; {cores} cores;"
        f" Python {sys.version.split()[0]}; {load()}",
        flush=True,
    )
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        upstream_proc, upstream = child(["--serve-upstream"])
        stack.callback(stop_stack, upstream_proc)
        upstream_base = upstream + "/v1"
        extra = {**LIMITS, "IMAGEGATE_TABLE": TABLE, "IMAGEGATE_ROUTES": routes_json(upstream_base)}
        # The timed stack's table has no stream: on AWS the usage function is a Lambda of its own, and
        # Dynoxide's writes slow as its stream grows. The counted stack below, on a table of its own, reads
        # its stream, so the usage function's writes are in the counts.
        stack_proc, base, key, dynamodb = start_stack(
            str(workdir / "stack"), **extra, IMAGEGATE_DEV_STREAM_SECONDS="0"
        )
        stack.callback(stop_stack, stack_proc)
        drain(stack_proc.stdout)
        aws = stack_aws_env(str(workdir / "stack"))
        dynamodb_endpoint = aws.get("AWS_ENDPOINT_URL_DYNAMODB") or aws["AWS_ENDPOINT_URL"]
        print(f"dynamodb: {dynamodb}", flush=True)
        seed_minimal_key(aws, key)
        minimal_proc, minimal_url = child(["--serve-minimal", dynamodb_endpoint, upstream_base])
        stack.callback(stop_stack, minimal_proc)

        def tree(proc: subprocess.Popen) -> Callable[[], list[int]]:
            return lambda: process_tree(proc.pid)

        minimal = Candidate("minimal", minimal_url, key, body("b64_json"), tree(minimal_proc))
        only_server = lambda: [stack_proc.pid]  # noqa: E731 (its children are the emulators)
        b64 = Candidate("imagegate b64", base, key, body("b64_json"), only_server)
        url = Candidate("imagegate url", base, key, body("url"), only_server)
        direct = Candidate("upstream", upstream, key, body("b64_json"), tree(upstream_proc))
        litellm = None
        litellm_missing = "left out (--no-litellm)"
        if not args.no_litellm:
            try:
                proc, litellm_url = start_litellm(ensure_litellm(), upstream_base, workdir)
                stack.callback(stop_stack, proc)
                litellm = Candidate(
                    f"LiteLLM {LITELLM_VERSION}", litellm_url, "sk-any", body("b64_json"), tree(proc)
                )
            except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
                litellm_missing = f"LiteLLM did not install or start: {exc}"
                print(litellm_missing, flush=True)
        candidates = [c for c in (minimal, b64, url, litellm) if c]
        for c in candidates:  # warm-up: bytecode, clients, the first upstream connection
            run(c.clients(1), 20)

        for r in range(args.rounds):
            order = candidates[r % len(candidates) :] + candidates[: r % len(candidates)]
            started = time.perf_counter()
            for c in order:
                measure_round(c, args.window, args.concurrency)
            measure_round(direct, args.window, args.concurrency, c1_only=True)
            print(
                f"  round {r + 1}: "
                + ", ".join(f"{c.name} {c.rounds[-1]['p50_c1']:.2f} ms" for c in candidates)
                + f" (p50 at c=1); {time.perf_counter() - started:.0f} s; {load()}",
                flush=True,
            )
        for c in candidates:
            c.rss = rss_mb(c.pids())

        # ---- counted at the emulator, through the proxy
        meter = capacity.Meter()
        dynamodb_proxy = CountingProxy(dynamodb_endpoint, meter)
        moto_proxy = CountingProxy(aws["AWS_ENDPOINT_URL"], meter)
        stack.callback(dynamodb_proxy.stop)
        stack.callback(moto_proxy.stop)
        counted_env = {
            **extra,
            "IMAGEGATE_TABLE": f"{TABLE}-counted",
            "IMAGEGATE_DEV_KEY": key,
            "AWS_ENDPOINT_URL": moto_proxy.url,
            "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_proxy.url,
        }
        counted_proc, counted_base, _, _ = start_stack(str(workdir / "counted"), **counted_env)
        stack.callback(stop_stack, counted_proc)
        drain(counted_proc.stdout)
        counted_minimal_proc, counted_minimal = child(["--serve-minimal", dynamodb_proxy.url, upstream_base])
        stack.callback(stop_stack, counted_minimal_proc)
        proxies = [dynamodb_proxy, moto_proxy]
        counts = {
            "minimal": count(
                Candidate("minimal", counted_minimal, key, minimal.body, list), meter, proxies, args.count
            ),
            "imagegate b64": count(
                Candidate("b64", counted_base, key, b64.body, list), meter, proxies, args.count
            ),
            "imagegate url": count(
                Candidate("url", counted_base, key, url.body, list), meter, proxies, args.count
            ),
        }
        report(args, candidates, minimal, b64, url, direct, litellm, litellm_missing, counts)


def report(
    args: argparse.Namespace,
    candidates: list[Candidate],
    minimal: Candidate,
    b64: Candidate,
    url: Candidate,
    direct: Candidate,
    litellm: Candidate | None,
    litellm_missing: str,
    counts: dict[str, Counts],
) -> None:
    print(f"\nmedians of {args.rounds} rounds (ratio to the minimal app in the same round); {load()}")
    header = f"  {'':<22}{'p50 c=1':>17}{'p95 c=1':>17}{'own c=1':>10}{'p50 c=8':>17}{'p95 c=8':>17}"
    print(header + f"{'req/s c=8':>17}{'CPU/req':>17}{'RSS':>17}")
    for c in candidates:
        cells = []
        for metric, unit in (("p50_c1", "ms"), ("p95_c1", "ms")):
            cells.append(f"{median(c, metric):7.2f} {unit} {median_ratio(c, minimal, metric):4.2f}x")
        cells.append(f"{overhead(c, direct):6.2f} ms")
        for metric, unit in (("p50_c8", "ms"), ("p95_c8", "ms"), ("rps_c8", "/s"), ("cpu_ms", "ms")):
            cells.append(f"{median(c, metric):7.1f} {unit} {median_ratio(c, minimal, metric):4.2f}x")
        cells.append(f"{c.rss:5.0f} MB {c.rss / minimal.rss:4.2f}x")
        print(
            f"  {c.name:<22}"
            + "".join(f"{cell:>17}" if i != 2 else f"{cell:>10}" for i, cell in enumerate(cells))
        )
    print(f"  (upstream alone: p50 {median(direct, 'p50_c1'):.2f} ms at c=1; 'own' is p50 minus that)")
    # Load inflates a candidate's latency with each hop to another process (imagegate: three DynamoDB
    # calls; LiteLLM: none): the quietest round shows what the machine's neighbours hide.
    lowest = ", ".join(f"{c.name} {min(overheads(c, direct)):.2f} ms" for c in candidates)
    print(f"  own overhead at c=1 in the quietest round: {lowest}")

    print(f"\ncounted at the emulator ({args.count} requests each at c=1, after 3 to warm up):")
    for name, counted in counts.items():
        print(f"  {name}: {counted.line()}")
        for row in capacity.summary(counted.tally, counted.requests):
            print(f"      {row}")

    memory = function_memory_mb()
    print(
        "\nAWS cost per million requests (us-east-1 list prices;"
        f" Lambda at FunctionMemorySize {memory} MB, arm64):"
    )
    for line in capacity.PRICES.lines():
        print(f"  assumed: {line}")
    print(
        f"  Lambda time of a fast request: its p50 at c=1 here, the CPU part stretched to"
        f" {min(1.0, memory / LAMBDA_FULL_VCPU_MB):.2f} vCPU; url answers: the S3 PUTs counted, and one GET"
        " per PUT assumed (the client's download)"
    )
    costs = {}
    for c in (minimal, b64, url):
        counted = counts[c.name]
        puts = counted.per_request("S3 PUT")
        parts = capacity.cost_per_million(
            write_units=counted.tally.write_units / counted.requests,
            read_units=counted.tally.read_units / counted.requests,
            lambda_ms=lambda_ms(c, memory),
            memory_mb=memory,
            s3_puts=puts,
            s3_gets=puts,
        )
        costs[c.name] = total = sum(parts.values())
        shares = ", ".join(f"{name} ${dollars:.2f}" for name, dollars in parts.items() if dollars)
        print(f"  {c.name:<14} ${total:6.2f} per million ({shares}; Lambda {lambda_ms(c, memory):.1f} ms)")
    second = capacity.lambda_second_cost(memory) * 1e6
    print(f"  each second a request waits for its upstream adds ${second:.2f} per million at {memory} MB")

    # ---- issue 22's targets, one line each for `make bench`
    print()
    cpu_ratio = median_ratio(b64, minimal, "cpu_ms")
    cost = costs["imagegate b64"]
    lines = [
        (
            f"TARGET 22 CPU per request, b64 (<= {TARGET_CPU_RATIO:.0f}x minimal)",
            cpu_ratio <= TARGET_CPU_RATIO,
            f"{cpu_ratio:.2f}x ({median(b64, 'cpu_ms'):.2f} ms vs {median(minimal, 'cpu_ms'):.2f} ms;"
            f" {(cpu_ratio / TARGET_CPU_RATIO - 1) * 100:+.0f}% against the target)",
        ),
        (
            f"TARGET 22 AWS cost per million fast b64 requests (<= ${TARGET_COST:.0f})",
            cost <= TARGET_COST,
            f"${cost:.2f} ({(cost / TARGET_COST - 1) * 100:+.0f}% against the target)",
        ),
    ]
    if litellm is None:
        for what in ("own overhead at c=1, b64 (<= LiteLLM's)", "req/s at c=8, b64 (>= LiteLLM's)"):
            lines.append((f"TARGET 22 {what}", False, f"not measured: {litellm_missing}"))
    else:
        mine, theirs = overhead(b64, direct), overhead(litellm, direct)
        rps = statistics.median(
            a["rps_c8"] / b["rps_c8"] for a, b in zip(b64.rounds, litellm.rounds, strict=True)
        )
        lines += [
            (
                "TARGET 22 own overhead at c=1, b64 (<= LiteLLM's)",
                mine <= theirs,
                f"{mine / theirs:.2f}x LiteLLM's ({mine:.2f} ms vs {theirs:.2f} ms; {mine - theirs:+.2f} ms)",
            ),
            (
                "TARGET 22 req/s at c=8, b64 (>= LiteLLM's)",
                rps >= 1,
                f"{rps:.2f}x LiteLLM's"
                f" ({median(b64, 'rps_c8'):.0f} vs {median(litellm, 'rps_c8'):.0f} req/s)",
            ),
        ]
    for head, met, figure in lines:
        print(f"{head}: {'MET' if met else 'NOT MET'} {figure}")


if __name__ == "__main__":
    main()
