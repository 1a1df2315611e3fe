"""`make serve`'s own machinery: the pinned Dynoxide install (scripts/dynoxide.py) runs no unverified bytes,
and the local worker waits idle without polling hot, yet starts a job queued in this process at once."""

import http.client
import importlib.util
import io
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from imagegate.local import devserver
from imagegate.local.devserver import (
    LocalWorker,
    aws_env,
    dynamodb_line,
    provision_jobs_queue,
    start_dynoxide,
)

REPO = Path(__file__).parents[2]
PATIENCE_S = 30  # far above a woken worker's milliseconds, far below its idle wait


def install_script():
    spec = importlib.util.spec_from_file_location("dynoxide_install", REPO / "scripts" / "dynoxide.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tarball(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_tarball_that_is_not_the_pinned_one_is_never_installed(tmp_path, monkeypatch):
    script = install_script()
    tampered = tarball(script.MEMBER, b"#!/bin/sh\necho pwned\n")
    monkeypatch.setattr(script.urllib.request, "urlopen", lambda url, timeout: Response(tampered))
    target = tmp_path / "bin" / "dynoxide"

    note = script.install(target, "linux", "x86_64")

    assert not target.exists()
    assert note.startswith("dynoxide: 1.2.1 not installed (the tarball does not match the pinned integrity")
    assert note.endswith("make serve keeps moto's DynamoDB")
    assert (tmp_path / "bin" / "dynoxide.unavailable").read_text() == note + "\n"


class CutShort(Response):
    def read(self, size=-1):
        raise http.client.IncompleteRead(b"partial", 990)


class Endless(Response):
    def read(self, size=-1):
        return b"\0" * size


@pytest.mark.parametrize(
    ("response", "why"),
    [(CutShort(), "IncompleteRead"), (Endless(), "larger than 33554432 bytes")],
)
def test_a_broken_or_endless_download_falls_back_to_moto_in_one_line(tmp_path, monkeypatch, response, why):
    script = install_script()
    monkeypatch.setattr(script.urllib.request, "urlopen", lambda url, timeout: response)
    target = tmp_path / "dynoxide"

    note = script.install(target, "linux", "x86_64")

    assert why in note and note.endswith("make serve keeps moto's DynamoDB")
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["dynoxide.unavailable"]  # no temporary file left


def test_the_verified_binary_is_installed_executable(tmp_path, monkeypatch):
    script = install_script()
    published = tarball(script.MEMBER, b"\x7fELF binary")
    monkeypatch.setattr(script, "INTEGRITY", script.integrity(published))  # as if npm had published it
    monkeypatch.setattr(script.urllib.request, "urlopen", lambda url, timeout: Response(published))
    target = tmp_path / "bin" / "dynoxide"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "dynoxide.unavailable").write_text("an earlier attempt failed\n")

    script.install(target, "linux", "x86_64")

    assert not (tmp_path / "bin" / "dynoxide.unavailable").exists()
    assert target.read_bytes() == b"\x7fELF binary"
    assert target.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(
    ("system", "machine"), [("darwin", "arm64"), ("linux", "aarch64"), ("win32", "AMD64")]
)
def test_other_platforms_keep_moto_without_a_download(tmp_path, monkeypatch, system, machine):
    script = install_script()
    monkeypatch.setattr(script.urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded"))
    target = tmp_path / "dynoxide"

    note = script.install(target, system, machine)

    assert note == f"dynoxide: no pinned build for {system} {machine}: make serve keeps moto's DynamoDB"
    assert not target.exists()


def test_aws_env_names_dynamodb_apart_or_clears_a_stale_one():
    with_dynoxide = aws_env("http://127.0.0.1:4566", "http://127.0.0.1:4567")
    assert "export AWS_ENDPOINT_URL=http://127.0.0.1:4566 " in with_dynoxide
    assert "export AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:4567\n" in with_dynoxide
    assert aws_env("http://127.0.0.1:4566", None).endswith("\nunset AWS_ENDPOINT_URL_DYNAMODB\n")
    # The region the stack runs in: moto keeps its state per region.
    in_eu = aws_env(
        "http://127.0.0.1:4566", None, {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1"}
    )
    assert " AWS_DEFAULT_REGION=eu-west-1" in in_eu and " AWS_REGION=eu-west-1" in in_eu


def test_an_idle_worker_wakes_when_this_process_queues_a_job(aws, settings):
    queue = provision_jobs_queue(aws, settings, f"{settings.table}-jobs")
    handled = threading.Event()
    bodies = []

    def handler(event, context):
        bodies.extend(record["body"] for record in event["Records"])
        handled.set()
        return {"batchItemFailures": []}

    polled = threading.Event()
    aws.sqs.meta.events.register("after-call.sqs.ReceiveMessage", lambda **_: polled.set(), unique_id="test")
    # Idle waits far longer than the test's patience: only the wake can deliver the job in time.
    worker = LocalWorker(handler, aws.sqs, queue, threads=1, idle_s=600, max_idle_s=600)
    worker.start()
    try:
        assert polled.wait(PATIENCE_S)  # its first poll found nothing: it is waiting now
        aws.sqs.send_message(QueueUrl=queue, MessageBody="job-1")
        assert handled.wait(PATIENCE_S), "the worker slept through a job queued in its own process"
    finally:
        worker.stop()
        aws.sqs.meta.events.unregister("after-call.sqs.ReceiveMessage", unique_id="test")
    assert bodies == ["job-1"]
    attributes = aws.sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"])
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "0"  # deleted once handled


def test_the_banner_says_which_dynamodb_runs_and_why():
    assert dynamodb_line(None, True, {"IMAGEGATE_DYNAMODB": "moto"}).endswith("(IMAGEGATE_DYNAMODB=moto)")
    forced = dynamodb_line(None, True, {"IMAGEGATE_DYNAMODB": "moto"}, "dynoxide: offline")
    assert forced.endswith("(IMAGEGATE_DYNAMODB=moto)")
    assert "Dynoxide is not installed: `make install` says why" in dynamodb_line(None, True, {})
    localstack = {"AWS_ENDPOINT_URL": "http://localhost:4566"}
    assert dynamodb_line(None, False, localstack) == "dynamodb: at http://localhost:4566"


def fake_binary(tmp_path, script: str) -> str:
    path = tmp_path / "dynoxide"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the dev server runs Dynoxide on Linux only")
def test_a_dynoxide_that_cannot_start_is_a_reason_not_a_hang_or_a_traceback(tmp_path, monkeypatch):
    broken = fake_binary(tmp_path, "exit 3\n")
    with pytest.raises(RuntimeError, match="--version failed"):
        start_dynoxide(broken, 0)
    # Says something else, then neither listens nor exits: killed after the startup bound.
    monkeypatch.setattr(devserver, "DYNOXIDE_STARTUP_S", 1)
    silent = fake_binary(
        tmp_path,
        'if [ "$1" = --version ]; then echo dynoxide 9; exit 0; fi\n'
        "echo 'warning: something' >&2\nexec sleep 600\n",
    )
    with pytest.raises(RuntimeError, match="Dynoxide did not start"):
        start_dynoxide(silent, 0)
    line = dynamodb_line(None, True, {}, "Dynoxide did not start: exit code -9")
    assert line == "dynamodb: moto's, at the same endpoint (Dynoxide did not start: exit code -9)"


def test_the_installer_s_reason_reaches_the_banner_without_a_rerun(tmp_path):
    """`make install` tries once per version: the reason it left is what the banner can give."""
    assert devserver.dynoxide_unavailable(str(tmp_path)) is None
    note = "dynoxide: no pinned build for darwin arm64: make serve keeps moto's DynamoDB"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "dynoxide.unavailable").write_text(note + "\n")
    assert devserver.dynoxide_unavailable(str(tmp_path)) == note
    assert dynamodb_line(None, True, {}, note).endswith(f"({note})")
