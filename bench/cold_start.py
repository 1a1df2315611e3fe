"""Cold-start benchmark for the Lambda handlers (`make bench`): a report, never a gate.

Each sample is a fresh interpreter (bench/_child.py, run with -I -S) that times, with time.perf_counter(),
the import of one handler module with sys.path = [function dir, layers/imagegate, stdlib, site-packages],
as Lambda lays out /var/task and /opt/python. Bytecode caches are written (no -B, -I ignores
PYTHONDONTWRITEBYTECODE) and one untimed warm-up round creates them, as a deployed layer ships .pyc files.

The baseline is what any FastAPI-on-Lambda handler pays whatever it does: importing fastapi, mangum,
pydantic and boto3, and creating one boto3 client. Target: handler median / baseline median <= 1.3.
The handlers import boto3 and create their clients on first use, so part of that cost moves out of their
import and into their first request: read the import ratio together with the first-request figures.

Informative figures, not part of the target:
- the local provider (Pillow) imported after a handler, i.e. what the first local render adds;
- "import + first request": the generations handler imported and invoked twice (cold, then warm) with an
  HTTP API v2 event (dall-e-2, 256x256, response_format=url) against a moto server in this process, so
  DynamoDB and S3 calls are real HTTP round trips to 127.0.0.1: faster than AWS, so this figure understates
  network time and isolates our own first-request work. Its floor is a minimal FastAPI+Mangum app doing one
  DynamoDB GetItem for the same event. Skipped with --no-request or when moto is not installed.

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
import uuid
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
# Two requests per sample at the dall-e-2 256x256 price, with room for the warm-up round.
PRICE_MICROS = 16_000


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
    "request_floor", "floor: FastAPI app + 1 GetItem, + 1st request", "request_floor", needs_aws=True
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


class MotoStack:
    """moto's server on a free port, with the table, bucket and one funded key the handler needs."""

    def __init__(self, env: dict[str, str], balance_micros: int) -> None:
        from imagegate.devserver import start_aws_emulator

        self.server = start_aws_emulator(0)  # the emulator make serve runs
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        for name in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
        ):
            os.environ[name] = env[name]

        from aws_lambda_powertools.logging import Logger

        from imagegate.aws import AWSClients
        from imagegate.config import Settings
        from imagegate.devserver import provision
        from imagegate.service import Service

        suffix = uuid.uuid4().hex[:8]
        settings = Settings(
            table=f"imagegate-bench-{suffix}", bucket=f"imagegate-bench-{suffix}", region=env["AWS_REGION"]
        )
        aws = AWSClients(settings, self.endpoint)
        provision(aws, settings)
        service = Service(settings, aws, Logger(service="imagegate-bench", level="WARNING"))
        account_id = service.accounts.create_account(balance_micros, label="bench")
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "IMAGEGATE_TABLE": settings.table,
            "IMAGEGATE_BUCKET": settings.bucket,
            "BENCH_API_KEY": service.accounts.create_key(account_id, label="bench"),
        }

    def stop(self) -> None:
        self.server.shutdown()


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="samples per candidate (default 15)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--no-request", action="store_true", help="skip the import + first request figures")
    parser.add_argument("--importtime", action="store_true", help="also break down one handler import")
    parser.add_argument("--top", type=int, default=10, help="rows per --importtime table (default 10)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    base_env = child_env({})
    candidates = [BASELINE, *IMPORTS, LOCAL]
    stack = None
    skipped_request = ""
    if args.no_request:
        skipped_request = "--no-request"
    else:
        try:
            stack = MotoStack(base_env, PRICE_MICROS * 2 * (args.runs + 2))
        except ImportError as exc:
            skipped_request = f"moto or imagegate not importable here ({exc})"
        else:
            candidates += [REQUEST, FLOOR]
    aws_env = child_env(stack.env) if stack else base_env

    try:
        samples, report = measure(candidates, args, base_env, aws_env)
    except RuntimeError as exc:  # a crashed child means there is no figure to report
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    finally:
        if stack:
            stack.stop()

    results = summarize(candidates, samples)
    target_met = print_table(args.runs, candidates, results, skipped_request)
    if report:
        print_importtime(report)
    if args.json:
        payload = {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "runs": args.runs,
            "target_ratio": TARGET_RATIO,
            "target_met": target_met,
            "request_skipped": skipped_request or None,
            "candidates": results,
            "importtime": report,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    return 0


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


def print_table(runs: int, candidates: list[Candidate], results: dict[str, dict], skipped: str) -> bool:
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
    if skipped:
        print(f"(import + first request not measured: {skipped})")
    elif REQUEST.name in results:
        ratio = results[REQUEST.name]["median_ms"] / results[FLOOR.name]["median_ms"]
        print(f"import + 1st request, generations handler / floor: {ratio:.2f} (informative)")

    worst = max(IMPORTS, key=lambda c: results[c.name]["ratio"])
    worst_ratio = results[worst.name]["ratio"]
    met = worst_ratio <= TARGET_RATIO
    verdict = "MET" if met else "NOT MET"
    print(
        f"\nTARGET {verdict}: every handler import within {TARGET_RATIO:.2f}x the baseline median "
        f"(worst: {worst.name} at {worst_ratio:.2f}x)"
    )
    print(
        "note: handlers import boto3 and create clients on first use, which the import figure leaves out; "
        "see 'import + 1st request'."
    )
    return met


if __name__ == "__main__":
    sys.exit(main())
