"""`make serve` as a newcomer meets it: a clean banner, a port in use refused before any key is shown, and a
restart that keeps the same dev key working."""

import os
import re
import socket
import subprocess
import sys
import time

import httpx

STARTUP_TIMEOUT_S = 60


def serve_env(state_dir, port: int = 0, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IMAGEGATE_", "OPENAI_"))}
    if "IMAGEGATE_DYNAMODB" in os.environ:  # IMAGEGATE_DYNAMODB=moto pytest ...: on moto's DynamoDB
        env["IMAGEGATE_DYNAMODB"] = os.environ["IMAGEGATE_DYNAMODB"]
    # Port 0 everywhere: the banner names the ports the server got.
    env.update(PORT=str(port), IMAGEGATE_AWS_PORT="0", IMAGEGATE_DEV_STATE=str(state_dir), **settings)
    return env


def start(state_dir, **settings: str) -> tuple[subprocess.Popen, list[str]]:
    """`make serve` with fresh state on free ports; `settings`: IMAGEGATE_* variables it reads."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagegate.local.devserver"],
        env=serve_env(state_dir, **settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("try:"):
            return proc, lines
    proc.kill()
    raise AssertionError(f"no banner: {lines} {proc.stderr.read()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def banner_fields(lines: list[str]) -> tuple[str, str]:
    text = "\n".join(lines)
    key = re.search(r"^dev key:\s+(sk-ig-\S+)$", text, re.M)[1]
    base_url = re.search(r"^base URL: (http://127\.0\.0\.1:\d+/v1)\s", text, re.M)[1]
    return key, base_url


def balance_status(base_url: str, key: str) -> int:
    response = httpx.get(f"{base_url}/balance", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return response.status_code


def test_banner_is_clean_and_a_restart_keeps_the_dev_key_working(tmp_path):
    proc, lines = start(tmp_path)
    try:
        assert not [line for line in lines if line.lstrip().startswith("{")], lines  # no JSON log lines
        assert lines[0].startswith("imagegate dev stack: AWS emulation at http://127.0.0.1:")
        key, base_url = banner_fields(lines)
        assert balance_status(base_url, key) == 200
    finally:
        stop(proc)

    proc, lines = start(tmp_path)  # fresh emulator state, as after Ctrl-C and `make serve`
    try:
        again, base_url = banner_fields(lines)
        assert again == key
        assert balance_status(base_url, key) == 200
    finally:
        stop(proc)
    assert (tmp_path / "dev-key").stat().st_mode & 0o077 == 0  # readable by its owner only


def test_a_port_in_use_is_refused_before_any_key_is_printed(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "imagegate.local.devserver"],
            env=serve_env(tmp_path, port),
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT_S,
        )
    assert result.returncode == 1
    assert "sk-ig" not in result.stdout + result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "PORT=" in result.stderr
    assert not (tmp_path / "dev-key").exists()
