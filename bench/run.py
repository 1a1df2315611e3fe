"""`make bench`: every issue 12 benchmark, then one line per target with its measured ratio and verdict.

A report, never a gate (not part of `make test` or CI); on 2 cores the whole run takes about 8 minutes (the
first one also installs LiteLLM into build/bench-litellm/).
- targets 1, 2, 6: bench/gateway.py (calls per request, CPU vs a minimal proxy, the gateway comparison);
- target 3: bench/cold_start.py (import + first request vs a minimal app);
- target 4: bench/local_stack.py, the local stack under load, when it exists (its owner's command line);
- target 5: bench/uploads.py, upload memory, when it exists;
- issue 10: bench/jobs.py, a burst of jobs through the local queue (jobs/s, exact money, reconcile);
- issue 22: bench/http_compare.py, imagegate over real sockets next to a minimal app and LiteLLM (latency,
  throughput, CPU, RSS; DynamoDB calls, write units and AWS cost per request, counted at the emulator).
- issue 18: bench/catalog.py, the catalog load and override parse out of a warm request's path.
Each figure is a ratio against a baseline measured in the same run, interleaved.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

# ---- the benchmarks run as scripts, each printing its own `TARGET <n> ...: MET|NOT MET` lines: target 4 (the
# local stack, 10,000 requests: most of make bench's time) and target 5 (uploads), with their defaults.
OPTIONAL = (
    ("4 local stack", BENCH / "local_stack.py", []),
    ("5 uploads", BENCH / "uploads.py", []),
    ("jobs burst", BENCH / "jobs.py", []),
    ("22 HTTP comparison", BENCH / "http_compare.py", []),
    ("catalog", BENCH / "catalog.py", []),
)


def run_optional(name: str, script: Path, args: list[str]) -> list[tuple[str, bool, str]]:
    if not script.exists():
        return [(name, False, f"not measured: {script.name} is not in this tree")]
    print(f"\n===== {script.name} =====", flush=True)
    cmd = [sys.executable, str(script), *args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    print(proc.stdout, end="", flush=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("TARGET ")]
    if not lines:
        return [(name, proc.returncode == 0, f"exit {proc.returncode}; no TARGET line printed")]
    out = []
    for line in lines:
        head, _, figure = line[len("TARGET ") :].partition(": ")
        met = figure.startswith("MET")
        out.append((head, met, figure.removeprefix("NOT MET" if not met else "MET").strip()))
    return out


def main() -> int:
    import cold_start
    import gateway

    started = time.perf_counter()
    targets: list[tuple[str, bool, str]] = []
    print("===== gateway.py =====", flush=True)
    targets += gateway.main([])
    print("\n===== cold_start.py =====", flush=True)
    targets += cold_start.main(["--runs", "10"])
    for name, script, args in OPTIONAL:
        targets += run_optional(name, script, args)
    print(f"\n===== targets ({time.perf_counter() - started:.0f} s) =====")
    for name, met, figure in sorted(targets, key=lambda t: t[0]):
        verdict = "MET" if met else ("NOT MEASURED" if figure.startswith("not measured") else "NOT MET")
        print(f"  {name:<52} {verdict:<12} {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
