"""One gateway measurement in a fresh interpreter; bench/gateway.py runs it.

_gateway_child.py inproc OUT ROUNDS PER_ROUND C8_REQUESTS [PROFILE_REQUESTS]
    Both candidates in this process, invoked through their Mangum handlers with REST API events; writes
    JSON to OUT. Logs (imagegate's JSON lines, EMF metrics) go to stdout, as on Lambda.
_gateway_child.py serve CANDIDATE
    One candidate on uvicorn, 127.0.0.1, a free port: prints `PORT <n>` first. GET /__bench/calls
    answers the fake DynamoDB's call counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from apps import CANDIDATES, Context, check, environment, minimal_plus_transactions, rest_event
from fakes import FakeDynamoDB, install_fake_aws, upstream_transport

WARMUP = 30
CALL_SAMPLE = 50


def setup() -> FakeDynamoDB:
    os.environ.update(environment())
    fake = FakeDynamoDB()
    install_fake_aws(fake)
    return fake


def http_client():
    import httpx

    return httpx.Client(transport=upstream_transport(), timeout=10)


def calls_per_request(fake: FakeDynamoDB, handler, idempotent: bool = False) -> dict[str, float]:
    before = fake.snapshot()
    for _ in range(CALL_SAMPLE):
        check(handler(rest_event(uuid.uuid4().hex if idempotent else None), Context()))
    after = fake.snapshot()
    return {
        op: (after.get(op, 0) - before.get(op, 0)) / CALL_SAMPLE
        for op in after
        if after[op] != before.get(op, 0)
    }


def sequential(handler, count: int) -> tuple[list[float], list[float]]:
    cpu, wall = [], []
    event, context = rest_event(), Context()
    for _ in range(count):
        c0, w0 = time.process_time(), time.perf_counter()
        response = handler(event, context)
        w1, c1 = time.perf_counter(), time.process_time()
        check(response)
        cpu.append((c1 - c0) * 1000)
        wall.append((w1 - w0) * 1000)
    return cpu, wall


def concurrent(handler, count: int, workers: int = 8) -> tuple[list[float], float]:
    """`count` requests from `workers` threads (each with its own event loop, as Mangum needs)."""
    local = threading.local()

    def init() -> None:
        local.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(local.loop)

    def one(_: int) -> float:
        started = time.perf_counter()
        check(handler(rest_event(), Context()))
        return (time.perf_counter() - started) * 1000

    with ThreadPoolExecutor(workers, initializer=init) as pool:
        list(pool.map(one, range(workers * 2)))  # every worker warm
        started = time.perf_counter()
        latencies = list(pool.map(one, range(count)))
        elapsed = time.perf_counter() - started
    return latencies, count / elapsed


def inproc(out: str, rounds: int, per_round: int, c8: int, profile: int = 0) -> None:
    fake = setup()
    handlers = {name: build(http_client())[1] for name, build in CANDIDATES.items()}
    for handler in handlers.values():
        sequential(handler, WARMUP)
    result: dict = {"calls": {}, "calls_idempotent": {}}
    for name, handler in handlers.items():
        result["calls"][name] = calls_per_request(fake, handler)
    # The floor: the minimal app with imagegate's own two transactions (as just sent) added.
    floor = minimal_plus_transactions(http_client(), fake)[1]
    sequential(floor, WARMUP)
    result["calls"]["minimal+2tx"] = calls_per_request(fake, floor)
    result["calls_idempotent"]["imagegate"] = calls_per_request(fake, handlers["imagegate"], idempotent=True)

    timed = {**handlers, "minimal+2tx": floor}
    samples = {name: {"cpu": [], "wall": []} for name in timed}
    round_ratios, floor_ratios = [], []
    names = list(timed)
    for r in range(rounds):
        # Request by request, alternating (and which goes first rotates by round): load from elsewhere on
        # the machine hits every candidate alike.
        k = r % len(names)
        order = names[k:] + names[:k]
        this_round: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(per_round):
            for name in order:
                cpu, wall = sequential(timed[name], 1)
                this_round[name] += cpu
                samples[name]["cpu"] += cpu
                samples[name]["wall"] += wall
        medians = {name: statistics.median(values) for name, values in this_round.items()}
        round_ratios.append(medians["imagegate"] / medians["minimal"])
        floor_ratios.append(medians["minimal+2tx"] / medians["minimal"])
    result["floor_ratios"] = floor_ratios
    result["inproc"] = samples
    result["round_ratios"] = round_ratios

    conc = {name: {"lat": [], "rps": []} for name in handlers}
    pair = list(handlers)
    for r in range(2):
        for name in pair[r:] + pair[:r]:
            lat, rps = concurrent(handlers[name], c8)
            conc[name]["lat"] += lat
            conc[name]["rps"].append(rps)
    result["inproc_c8"] = conc

    if profile:
        from sampler import Sampler

        with Sampler() as sampler:
            sequential(handlers["imagegate"], profile)
        result["profile"] = sampler.report()
    Path(out).write_text(json.dumps(result))


class Stats:
    """ASGI wrapper answering GET /__bench/calls with the fake's counts; everything else goes to the app."""

    def __init__(self, app, fake: FakeDynamoDB) -> None:
        self.app, self.fake = app, fake

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/__bench/calls":
            body = json.dumps(self.fake.snapshot()).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def serve(candidate: str) -> None:
    import socket

    import uvicorn

    fake = setup()
    app, _handler = CANDIDATES[candidate](http_client())
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only then; with proto 0, Nagle holds a
    # response's last small write for the client's delayed ACK (~40 ms a request).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
    config = uvicorn.Config(Stats(app, fake), log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    sys.stderr.write(f"PORT {sock.getsockname()[1]}\n")
    sys.stderr.flush()
    server.run(sockets=[sock])


if __name__ == "__main__":
    if sys.argv[1] == "inproc":
        inproc(sys.argv[2], *(int(a) for a in sys.argv[3:]))
    else:
        serve(sys.argv[2])
