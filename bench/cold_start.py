"""Cold-start benchmark for the Lambda handlers (`make bench`): a report, never a gate.

Each sample is a fresh interpreter (bench/_child.py, run with -I -S) that times, with time.perf_counter(),
the import of one handler module with sys.path = [function dir, layers/imagegate, stdlib, site-packages],
as Lambda lays out /var/task and /opt/python. Bytecode caches are written (no -B, -I ignores
PYTHONDONTWRITEBYTECODE) and one untimed warm-up round creates them, as a deployed layer ships .pyc files.

The baseline is what any FastAPI-on-Lambda handler pays whatever it does: importing fastapi, mangum,
pydantic and boto3, and creating one boto3 client. Target: handler median / baseline median <= 1.3.
The handlers import boto3 and create their clients on first use, so part of that cost moves out of their
import and into their first request: read the import ratio together with the first-request figures.

Issue 12, target 3: "import + first request" of the generations handler within 1.15x the floor's. Each
child imports the handler and invokes it twice (cold, then warm) with a REST API event (dall-e-2,
256x256, b64_json). DynamoDB and the upstream are bench/fakes.py's FakeServer on 127.0.0.1 (canned
answers, so the figure is our own work plus loopback round trips, never an emulator's). The floor is a
minimal FastAPI + Mangum app doing what any such proxy must: one DynamoDB GetItem for the key and the same
upstream call through httpx. Skipped with --no-request.

Informative: the local provider (Pillow) imported after a handler, i.e. what the first local render adds.

Candidates are interleaved within each round (in a rotating order) so machine noise hits all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CHILD = BENCH / "_child.py"
LAYER = ROOT / "layers" / "imagegate"
SITE = sysconfig.get_paths()["purelib"]
HANDLERS = ("generations", "edits", "variations")
TARGET_RATIO = 1.3
MARKER = "@@BENCH@@ "
CHILD_TIMEOUT = 180
# Issue 12, target 3: import + first request of the generations handler within this of the floor app's.
REQUEST_TARGET_RATIO = 1.15


@dataclass(frozen=True)
class Candidate:
    name: str
    label: str
    mode: str  # a MODES key in _child.py
    target: str = "app"
    function: str = "generations"  # whose dir comes first on sys.path
    needs_aws: bool = False

    @property
    def front(self) -> str:
        return f"{ROOT / 'functions' / self.function}:{LAYER}"


BASELINE = Candidate("baseline", "baseline: fastapi+mangum+pydantic+boto3, 1 client", "baseline")
IMPORTS = [Candidate(h, f"{h} handler import", "import", function=h) for h in HANDLERS]
LOCAL = Candidate(
    "local_provider",
    "  + imagegate.providers.local after handler",
    "incremental",
    "imagegate.providers.local",
)
REQUEST = Candidate("generations_request", "generations import + 1st request", "request", needs_aws=True)
FLOOR = Candidate(
    "request_floor",
    "floor: FastAPI+Mangum, 1 GetItem + upstream, + 1st request",
    "request_floor",
    needs_aws=True,
)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """A Lambda-like environment: settings for Settings.from_env, fake credentials, no local AWS config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IMAGEGATE_", "PYTHON"))}
    env.update(
        IMAGEGATE_TABLE="imagegate-bench",
        IMAGEGATE_BUCKET="imagegate-bench-outputs",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_LAMBDA_FUNCTION_NAME="imagegate-bench",
        AWS_LAMBDA_FUNCTION_MEMORY_SIZE="1024",
        AWS_EXECUTION_ENV="AWS_Lambda_python3.11",
    )
    env.update(extra)
    return env


def run_child(candidate: Candidate, env: dict[str, str], importtime: bool = False) -> dict:
    flags = ["-I", "-S"] + (["-X", "importtime"] if importtime else [])
    cmd = [sys.executable, *flags, str(CHILD), candidate.mode, candidate.target, candidate.front, SITE]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{candidate.name}: child exited {proc.returncode}\n{proc.stderr[-3000:]}{proc.stdout[-1000:]}"
        )
    result = json.loads(lines[-1][len(MARKER) :])
    if importtime:
        result["importtime"] = proc.stderr
    return result


class FakeStack:
    """bench/fakes.py's FakeServer on loopback: canned DynamoDB answers and the fake upstream, for both the
    generations handler (IMAGEGATE_ROUTES sends dall-e-2 there) and the floor app."""

    def __init__(self) -> None:
        sys.path.insert(0, str(BENCH))
        from fakes import API_KEY, LIMITS, FakeServer, routes_json

        self.server = FakeServer()
        self.env = {
            "AWS_ENDPOINT_URL": self.server.url,
            "IMAGEGATE_ROUTES": routes_json(self.server.url + "/v1"),
            "IMAGEGATE_METRICS": "on",
            "POWERTOOLS_SERVICE_NAME": "imagegate",
            **LIMITS,
            "BENCH_API_KEY": API_KEY,
            "BENCH_UPSTREAM_BASE": self.server.url + "/v1",
        }

    def stop(self) -> None:
        self.server.stop()


def p90(values: list[float]) -> float:
    if len(values) < 2:
        return max(values)
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def stats(values: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(values), "p90_ms": p90(values)}


def parse_importtime(stderr: str) -> list[dict]:
    """`-X importtime` lines, in import order, each with its parent (the module whose import caused it)."""
    rows = []
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            own, cumulative, indent, name = match.groups()
            rows.append(
                {"name": name, "self_us": int(own), "cum_us": int(cumulative), "level": len(indent) // 2}
            )
    # Lines are post-order (children first); walked backwards, a line's enclosing import is the nearest
    # shallower one.
    stack: list[dict] = []
    for index in reversed(range(len(rows))):
        row = rows[index]
        while stack and stack[-1]["level"] >= row["level"]:
            stack.pop()
        row["parent"] = stack[-1]["name"] if stack else None
        row["parent_index"] = stack[-1]["index"] if stack else None
        row["index"] = index
        stack.append(row)
    return rows


def importtime_report(base_env: dict[str, str], top: int) -> dict:
    """Where the handler's import time goes beyond the baseline: our modules, and the extra dependencies."""
    handler = parse_importtime(run_child(IMPORTS[0], base_env, importtime=True)["importtime"])
    baseline_run = run_child(BASELINE, base_env, importtime=True)["importtime"]
    baseline_modules = {r["name"] for r in parse_importtime(baseline_run)}
    ours = [r for r in handler if r["name"] == "app" or r["name"].startswith("imagegate")]
    ours_names = {r["name"] for r in ours}
    children: dict[int | None, list[dict]] = {}
    for r in handler:
        children.setdefault(r["parent_index"], []).append(r)

    def beyond(row: dict) -> int:
        # A module's own time plus whatever it pulls in that the baseline would not have loaded anyway.
        return row["self_us"] + sum(
            beyond(c) for c in children.get(row["index"], []) if c["name"] not in baseline_modules
        )

    for row in ours:
        row["beyond_baseline_us"] = beyond(row)
    # Where a module the baseline never loads first enters the handler: the root of an avoidable subtree.
    # Imports made by code that runs at import time (FastAPI registering a route, say) count under the
    # module being imported when they happened.
    extra = [
        r
        for r in handler
        if r["name"] not in baseline_modules
        and r["name"] not in ours_names
        and (r["parent"] in baseline_modules or r["parent"] in ours_names or r["parent"] is None)
    ]
    shared_first = [
        r
        for r in handler
        if r["name"] in baseline_modules and r["parent"] in ours_names and r["cum_us"] >= 1000
    ]

    def by_cum(rows: list[dict]) -> list[dict]:
        return sorted(rows, key=lambda r: r["cum_us"], reverse=True)[:top]

    return {
        "ours": by_cum(ours),
        "extra": by_cum(extra),
        "baseline_deps_via_ours": by_cum(shared_first),
    }


def print_importtime(report: dict) -> None:
    def show(title: str, rows: list[dict], beyond: bool = False) -> None:
        print(f"\n{title}")
        extra_col = f" {'beyond base':>11}" if beyond else ""
        print(f"  {'cumulative':>10} {'self':>8}{extra_col}  module (under)")
        for r in rows:
            extra_val = f" {r['beyond_baseline_us'] / 1000:>9.1f}ms" if beyond else ""
            print(
                f"  {r['cum_us'] / 1000:>8.1f}ms {r['self_us'] / 1000:>6.1f}ms{extra_val}"
                f"  {r['name']}  ({r['parent'] or '-'})"
            )

    print("\n-X importtime, generations handler, one run (importtime inflates absolute numbers):")
    app = next((r for r in report["ours"] if r["name"] == "app"), None)
    if app:
        print(
            f"handler import {app['cum_us'] / 1000:.1f}ms, of which {app['beyond_baseline_us'] / 1000:.1f}ms "
            "is beyond what the baseline imports"
        )
    show(
        "our modules, by cumulative cost; 'beyond base' leaves out baseline imports under them:",
        report["ours"],
        True,
    )
    show("imports the baseline does not make, where each first enters:", report["extra"])
    show(
        "baseline dependencies our modules import first (unavoidable; for scale):",
        report["baseline_deps_via_ours"],
    )


def main(argv: list[str] | None = None) -> list[tuple[str, bool, str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="samples per candidate (default 15)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--no-request", action="store_true", help="skip the import + first request figures")
    parser.add_argument("--importtime", action="store_true", help="also break down one handler import")
    parser.add_argument("--top", type=int, default=10, help="rows per --importtime table (default 10)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    base_env = child_env({})
    candidates = [BASELINE, *IMPORTS, LOCAL]
    stack = None
    skipped_request = ""
    if args.no_request:
        skipped_request = "--no-request"
    else:
        stack = FakeStack()
        candidates += [REQUEST, FLOOR]
    aws_env = child_env(stack.env) if stack else base_env

    try:
        samples, report = measure(candidates, args, base_env, aws_env)
    except RuntimeError as exc:  # a crashed child means there is no figure to report
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return [("3 cold start: import + 1st request vs minimal app", False, "the benchmark failed")]
    finally:
        if stack:
            stack.stop()

    results = summarize(candidates, samples)
    targets = print_table(args.runs, candidates, results, skipped_request)
    if report:
        print_importtime(report)
    if args.json:
        payload = {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "runs": args.runs,
            "import_target_ratio": TARGET_RATIO,
            "targets": targets,
            "request_skipped": skipped_request or None,
            "candidates": results,
            "importtime": report,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    return targets


def measure(
    candidates: list[Candidate], args: argparse.Namespace, base_env: dict[str, str], aws_env: dict[str, str]
) -> tuple[dict[str, list[dict]], dict | None]:
    samples: dict[str, list[dict]] = {c.name: [] for c in candidates}
    for candidate in candidates:  # untimed warm-up: writes the bytecode caches
        run_child(candidate, aws_env if candidate.needs_aws else base_env)
    for round_no in range(args.runs):
        k = round_no % len(candidates)
        for candidate in candidates[k:] + candidates[:k]:
            samples[candidate.name].append(run_child(candidate, aws_env if candidate.needs_aws else base_env))
    report = importtime_report(base_env, args.top) if args.importtime else None
    return samples, report


def summarize(candidates: list[Candidate], samples: dict[str, list[dict]]) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for c in candidates:
        runs = samples[c.name]
        entry: dict = {"label": c.label, "samples": runs}
        if c.needs_aws:
            entry.update(stats([r["import_ms"] + r["first_ms"] for r in runs]))
            entry["import"] = stats([r["import_ms"] for r in runs])
            entry["first_request"] = stats([r["first_ms"] for r in runs])
            entry["warm_request"] = stats([r["warm_ms"] for r in runs])
            entry["statuses"] = sorted({(r["first"]["status"], r["warm"]["status"]) for r in runs})
        else:
            entry.update(stats([r["import_ms"] for r in runs]))
        results[c.name] = entry
    base = results["baseline"]["median_ms"]
    for name, entry in results.items():
        if name != LOCAL.name:
            entry["ratio"] = entry["median_ms"] / base
    return results


def print_table(
    runs: int, candidates: list[Candidate], results: dict[str, dict], skipped: str
) -> list[tuple[str, bool, str]]:
    print(
        f"cold start: {runs} fresh interpreters per candidate, interleaved; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    width = 50
    print(f"{'candidate':<{width}} {'median ms':>10} {'p90 ms':>9} {'/baseline':>10}")
    for c in candidates:
        e = results[c.name]
        ratio = f"{e['ratio']:.2f}" if "ratio" in e else "-"
        print(f"{c.label:<{width}} {e['median_ms']:>10.1f} {e['p90_ms']:>9.1f} {ratio:>10}")
        if c.needs_aws:
            for part, label in (
                ("import", "import"),
                ("first_request", "1st request"),
                ("warm_request", "2nd request"),
            ):
                print(f"{'    ' + label:<{width}} {e[part]['median_ms']:>10.1f} {e[part]['p90_ms']:>9.1f}")
            bad = [s for s in e["statuses"] if s != (200, 200)]
            if bad:
                print(
                    f"    WARNING: responses were not all 200: {bad}; e.g. {e['samples'][0]['first']['body']}"
                )
    targets = []
    if skipped:
        print(f"(import + first request not measured: {skipped})")
    elif REQUEST.name in results:
        request, floor = results[REQUEST.name], results[FLOOR.name]
        ratio = request["median_ms"] / floor["median_ms"]
        print(f"import + 1st request, generations handler / floor: {ratio:.2f}")
        targets.append(
            (
                "3 cold start: import + 1st request vs minimal app",
                ratio <= REQUEST_TARGET_RATIO,
                f"{ratio:.2f}x (<= {REQUEST_TARGET_RATIO:.2f}x): {request['median_ms']:.0f} ms vs "
                f"{floor['median_ms']:.0f} ms (medians)",
            )
        )

    worst = max(IMPORTS, key=lambda c: results[c.name]["ratio"])
    worst_ratio = results[worst.name]["ratio"]
    met = worst_ratio <= TARGET_RATIO
    print(
        f"every handler import within {TARGET_RATIO:.2f}x the baseline import (informative): "
        f"{'yes' if met else 'no'}, worst {worst.name} at {worst_ratio:.2f}x"
    )
    for name, ok, figure in targets:
        print(f"\nTARGET {name}: {'MET' if ok else 'NOT MET'}  {figure}")
    return targets


if __name__ == "__main__":
    sys.exit(0 if all(met for _, met, _ in main()) else 1)
