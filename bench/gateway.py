"""Gateway benchmark (issue 12, targets 1, 2 and 6): imagegate against a minimal proxy on one fake upstream.

Candidates (bench/apps.py): imagegate's generations function as Lambda builds it, and a minimal FastAPI +
Mangum app that looks the key up with one DynamoDB GetItem and calls the same upstream. Both run on the
same fakes (bench/fakes.py): canned DynamoDB answers behind botocore's full request path, and an
OpenAI-compatible upstream answering one small b64 PNG. Requests: dall-e-2, 256x256, b64_json.

In process (one fresh interpreter, both candidates, REST API events through their Mangum handlers):
- DynamoDB calls per warm request, counted at the fake (target 1: <= 3, <= 4 with an Idempotency-Key);
- CPU per warm request (time.process_time, every thread), the candidates alternating request by request;
  target 2: the median of per-round ratios imagegate / minimal <= 2.0;
- p50/p95 latency, and throughput at concurrency 1 and 8 (threads, each with its own event loop).
Over HTTP (each candidate in its own process on uvicorn, 127.0.0.1, a free port; an httpx client here):
- p50/p95 and throughput at concurrency 1 and 8, DynamoDB calls per request, and the server's RSS.

`--profile N` adds where imagegate's CPU goes over N more requests (bench/sampler.py).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CHILD = BENCH / "_gateway_child.py"
CALLS_TARGET = 3
CALLS_TARGET_IDEMPOTENT = 4
CPU_TARGET = 2.0
NAMES = ("imagegate", "minimal")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IMAGEGATE_", "POWERTOOLS_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "layers" / "imagegate"), str(BENCH)])
    return env


def in_process(rounds: int, per_round: int, c8: int, profile: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        numbers = [str(n) for n in (rounds, per_round, c8, profile)]
        cmd = [sys.executable, str(CHILD), "inproc", str(out), *numbers]
        proc = subprocess.run(
            cmd, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600
        )
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"in-process bench failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


class Server:
    """One candidate served by uvicorn in its own process (logs to /dev/null, as nobody reads them here)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), "serve", name],
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stderr.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"{name} server did not start: {line}{self.proc.stderr.read()[-2000:]}")
        self.url = f"http://127.0.0.1:{line.split()[1]}"
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def rss_mb(self) -> tuple[float, float]:
        """(current RSS, peak RSS) of the server process, in MB."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def load(client, url: str, count: int, concurrency: int) -> tuple[list[float], float]:
    from fakes import API_KEY, request_body

    body = request_body()
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}

    def one(_: int) -> float:
        started = time.perf_counter()
        response = client.post(url + "/v1/images/generations", content=body, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
        return elapsed

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency * 2)))  # connections open, workers warm
        started = time.perf_counter()
        latencies = list(pool.map(one, range(count)))
        elapsed = time.perf_counter() - started
    return latencies, count / elapsed


def over_http(c1: int, c8: int, repeats: int = 2) -> dict:
    import httpx

    sys.path.insert(0, str(BENCH))
    servers = {name: Server(name) for name in NAMES}
    result: dict = {name: {"c1": [], "c8": [], "rps1": [], "rps8": []} for name in NAMES}
    # TCP_NODELAY: httpx writes headers and body separately, and Nagle + delayed ACKs would add ~40 ms.
    nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
    transport = httpx.HTTPTransport(socket_options=nodelay, limits=httpx.Limits(max_connections=16))
    try:
        with httpx.Client(timeout=30, transport=transport) as client:
            before = {n: client.get(s.url + "/__bench/calls").json() for n, s in servers.items()}
            sent = dict.fromkeys(NAMES, 0)
            for r in range(repeats):
                order = NAMES[r % 2 :] + NAMES[: r % 2]
                for name in order:
                    lat, rps = load(client, servers[name].url, c1, 1)
                    result[name]["c1"] += lat
                    result[name]["rps1"].append(rps)
                    sent[name] += c1 + 2
                for name in order:
                    lat, rps = load(client, servers[name].url, c8, 8)
                    result[name]["c8"] += lat
                    result[name]["rps8"].append(rps)
                    sent[name] += c8 + 16
            for name, server in servers.items():
                after = client.get(server.url + "/__bench/calls").json()
                calls = sum(after.values()) - sum(before[name].values())
                result[name]["calls"] = calls / sent[name]
                result[name]["rss_mb"], result[name]["peak_rss_mb"] = server.rss_mb()
    finally:
        for server in servers.values():
            server.stop()
    return result


def summarise(inproc: dict, http: dict | None) -> dict:
    calls = {n: sum(inproc["calls"][n].values()) for n in NAMES}
    idem = inproc["calls_idempotent"]["imagegate"]
    idem_dynamodb = sum(v for k, v in idem.items() if not k.startswith("S3"))
    cpu = {n: statistics.median(inproc["inproc"][n]["cpu"]) for n in (*NAMES, "minimal+2tx")}
    return {
        "calls": calls,
        "calls_detail": inproc["calls"],
        "calls_idempotent": idem_dynamodb,
        "calls_idempotent_detail": idem,
        "cpu_ms": cpu,
        # The median of per-round ratios: each round alternates the candidates request by request.
        "cpu_ratio": statistics.median(inproc["round_ratios"]),
        "cpu_round_ratios": inproc["round_ratios"],
        "floor_ratio": statistics.median(inproc["floor_ratios"]),
        "inproc": {
            n: {
                "p50": pct(inproc["inproc"][n]["wall"], 50),
                "p95": pct(inproc["inproc"][n]["wall"], 95),
                "rps1": 1000 / statistics.mean(inproc["inproc"][n]["wall"]),
                "c8_p50": pct(inproc["inproc_c8"][n]["lat"], 50),
                "c8_p95": pct(inproc["inproc_c8"][n]["lat"], 95),
                "rps8": statistics.median(inproc["inproc_c8"][n]["rps"]),
            }
            for n in NAMES
        },
        "http": None
        if http is None
        else {
            n: {
                "p50": pct(http[n]["c1"], 50),
                "p95": pct(http[n]["c1"], 95),
                "rps1": statistics.median(http[n]["rps1"]),
                "c8_p50": pct(http[n]["c8"], 50),
                "c8_p95": pct(http[n]["c8"], 95),
                "rps8": statistics.median(http[n]["rps8"]),
                "calls": http[n]["calls"],
                "rss_mb": http[n]["rss_mb"],
                "peak_rss_mb": http[n]["peak_rss_mb"],
            }
            for n in NAMES
        },
        "profile": inproc.get("profile"),
    }


def verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def print_report(s: dict) -> list[tuple[str, bool, str]]:
    """Print the tables; return (target, met, one-line figure) for the summary."""
    print("DynamoDB calls per warm request, counted at the fake:")
    for n in s["calls_detail"]:
        print(f"  {n:<12} {sum(s['calls_detail'][n].values()):.2f}  {s['calls_detail'][n]}")
    print(f"  imagegate with an Idempotency-Key: {s['calls_idempotent']:.2f}  {s['calls_idempotent_detail']}")
    print("\nCPU per warm request in process (median; interleaved rounds):")
    for n in s["cpu_ms"]:
        print(f"  {n:<12} {s['cpu_ms'][n]:.2f} ms")
    rounds = ", ".join(f"{r:.2f}" for r in s["cpu_round_ratios"])
    print(f"  imagegate / minimal: {s['cpu_ratio']:.2f}, the median of per-round ratios ({rounds})")
    print(
        f"  minimal+2tx / minimal: {s['floor_ratio']:.2f}: imagegate's three DynamoDB calls alone, none of"
        " its own code (the floor for target 2 with botocore)"
    )
    columns = ("p50 ms", "p95 ms", "req/s c=1", "p50 c=8", "p95 c=8", "req/s c=8")
    header = f"  {'':<10}" + "".join(f" {c:>8}" if "req" not in c else f" {c:>10}" for c in columns)
    tables = (("in process (Mangum handler)", s["inproc"]), ("over HTTP (uvicorn, loopback)", s["http"]))
    for title, table in tables:
        if table is None:
            continue
        print(f"\n{title}:")
        extra = f" {'calls/req':>9} {'RSS MB':>7} {'peak MB':>7}" if "rss_mb" in table["imagegate"] else ""
        print(header + extra)
        for n in NAMES:
            t = table[n]
            row = (
                f"  {n:<10} {t['p50']:>8.2f} {t['p95']:>8.2f} {t['rps1']:>10.1f} {t['c8_p50']:>8.2f}"
                f" {t['c8_p95']:>8.2f} {t['rps8']:>10.1f}"
            )
            if extra:
                row += f" {t['calls']:>9.2f} {t['rss_mb']:>7.1f} {t['peak_rss_mb']:>7.1f}"
            print(row)
        i, m = table["imagegate"], table["minimal"]
        print(
            f"  imagegate / minimal: p50 {i['p50'] / m['p50']:.2f}x, "
            f"throughput c=1 {i['rps1'] / m['rps1']:.2f}x, c=8 {i['rps8'] / m['rps8']:.2f}x"
        )
    if s["profile"]:
        print("\nwhere imagegate's CPU goes (sampled, in process):")
        print(s["profile"])
    calls_met = s["calls"]["imagegate"] <= CALLS_TARGET and s["calls_idempotent"] <= CALLS_TARGET_IDEMPOTENT
    targets = [
        (
            "1 DynamoDB calls per warm request",
            calls_met,
            f"{s['calls']['imagegate']:.2f} (<= {CALLS_TARGET}); {s['calls_idempotent']:.2f} with an "
            f"Idempotency-Key (<= {CALLS_TARGET_IDEMPOTENT}); minimal app {s['calls']['minimal']:.2f}",
        ),
        (
            "2 CPU per warm request vs minimal",
            s["cpu_ratio"] <= CPU_TARGET,
            f"{s['cpu_ratio']:.2f}x (<= {CPU_TARGET:.1f}x): {s['cpu_ms']['imagegate']:.2f} ms vs "
            f"{s['cpu_ms']['minimal']:.2f} ms",
        ),
    ]
    if s["http"] is not None:
        i, m = s["http"]["imagegate"], s["http"]["minimal"]
        targets.append(
            (
                "6 gateway benchmark (report)",
                True,
                f"HTTP p50 {i['p50']:.1f}/{m['p50']:.1f} ms, c=8 {i['rps8']:.0f}/{m['rps8']:.0f} req/s, "
                f"RSS {i['rss_mb']:.0f}/{m['rss_mb']:.0f} MB (imagegate/minimal)",
            )
        )
    return targets


def main(argv: list[str] | None = None) -> list[tuple[str, bool, str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved in-process rounds (default 15)")
    parser.add_argument("--per-round", type=int, default=20, help="requests per candidate per round (20)")
    parser.add_argument("--c8", type=int, default=200, help="requests per concurrency-8 run (default 200)")
    parser.add_argument("--c1", type=int, default=150, help="requests per HTTP concurrency-1 run (150)")
    parser.add_argument("--profile", type=int, default=0, help="also sample imagegate's CPU over N requests")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP part")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    print(
        f"gateway: imagegate vs a minimal FastAPI+Mangum proxy, one fake upstream, canned DynamoDB; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n"
    )
    inproc = in_process(args.rounds, args.per_round, args.c8, args.profile)
    http = None if args.no_http else over_http(args.c1, args.c8)
    summary = summarise(inproc, http)
    targets = print_report(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    print()
    for name, met, figure in targets:
        print(f"TARGET {name}: {verdict(met)}  {figure}")
    return targets


if __name__ == "__main__":
    results = main()
    sys.exit(0 if all(met for _, met, _ in results) else 1)
