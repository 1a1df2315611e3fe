"""`make serve`: the whole stack on one machine, offline.

S3, SQS and EventBridge come from moto's server on 127.0.0.1:4566, and DynamoDB from Dynoxide on the next
port (4567) when `make install` could install it (scripts/dynoxide.py: linux x86_64), else from moto's server
too; AWS_ENDPOINT_URL pointing elsewhere (LocalStack, say) replaces both. The table, bucket and queues are
created, a funded dev key is seeded, uvicorn serves all routes on 127.0.0.1:$PORT, and the job worker runs in
this process against the local queue (LocalWorker), through the worker function's own handler; so do webhook
deliveries, from their own local queue, and finished jobs' events go to moto's EventBridge default bus. The
usage counters follow the table's stream, read every half second (streams.py), as the usage function does.

The dev key is kept in `.imagegate/dev-key` (or IMAGEGATE_DEV_KEY), so a restart seeds the same key again:
the emulators keep their state in memory, so balances and images start afresh, but `OPENAI_API_KEY` keeps
working; `.imagegate/aws-env` holds the endpoints for the admin CLI. The moto emulator (emulator.py) serves
one request at a time, snapshots only the items a transaction names, and deletes images once older than their
URLs or past a memory cap, so that hours of load stay fast. Why Dynoxide for DynamoDB: moto's expression
engine costs ~60 ms of CPU per request, one request at a time; Dynoxide (Rust, SQLite) a few ms, concurrently,
with transactions as atomic and isolated as DynamoDB's (tests/e2e/test_devserver_concurrency.py).
Every port is bound before anything is printed, so a port in use is an error, not a key that never works.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

    from imagegate.local.fake_stripe import FakeStripe

from imagegate.aws import DYNAMODB_ENDPOINT_ENV, AWSClients, endpoints_from_env
from imagegate.config import JOB_MAX_DELIVERIES, Settings, visibility_timeout
from imagegate.errors import APIError
from imagegate.money.accounts import Accounts
from imagegate.table import OPEN_INDEX
from imagegate.units import micros_to_usd, usd_to_micros

# How often `make serve` reads the table's stream for the usage counters (seconds; 0: never).
STREAM_INTERVAL_ENV = "IMAGEGATE_DEV_STREAM_SECONDS"

LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# `make serve`'s emulator: serves until its parent closes the pipe (or dies), so none is ever left behind.
EMULATOR_CHILD = """
import signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; EOF ends us
from imagegate.local.devserver import start_aws_emulator
print(start_aws_emulator(int(sys.argv[1])).server_address[1], flush=True)
sys.stdin.read()
"""


def start_aws_emulator(port: int) -> BaseWSGIServer:
    """Serve moto's S3, SQS, EventBridge (and DynamoDB) on 127.0.0.1:`port` (0: any free one) from a daemon
    thread.

    One request at a time, transactions that snapshot only the items they name, and outputs deleted after
    the URLs' hour or past a memory cap: emulator.py says why.
    """
    from imagegate.local.emulator import serve

    return serve(port)


@dataclass
class Dynoxide:
    """A running Dynoxide: `make serve`'s DynamoDB."""

    process: subprocess.Popen
    endpoint: str
    version: str

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


PR_SET_PDEATHSIG = 1  # linux/prctl.h
DYNOXIDE_ATTEMPTS = 3  # a free port can be taken between our check and Dynoxide's bind
DYNOXIDE_STARTUP_S = 15  # it listens within milliseconds; this only bounds a start that hangs


def dynoxide_binary(env: Mapping[str, str]) -> str | None:
    """The Dynoxide `make install` put in this venv (scripts/dynoxide.py), unless IMAGEGATE_DYNAMODB=moto."""
    if env.get("IMAGEGATE_DYNAMODB") == "moto" or not sys.platform.startswith("linux"):
        return None
    return shutil.which("dynoxide", path=os.path.join(sys.prefix, "bin"))


def dynoxide_unavailable(prefix: str = sys.prefix) -> str | None:
    """Why there is no Dynoxide in this venv: the one line its installer left (scripts/dynoxide.py), if any.
    `make install` runs the installer once per version, so this file, not a rerun, keeps the reason."""
    try:
        return Path(prefix, "bin", "dynoxide.unavailable").read_text().strip() or None
    except OSError:
        return None


def start_dynoxide(binary: str, port: int) -> Dynoxide:
    """Dynoxide, in memory, on 127.0.0.1:`port` (0: a free one), as a child that dies with this process.

    Its own session, so that the terminal's Ctrl-C reaches only us (uvicorn still finishes the requests in
    flight, which need DynamoDB), and the kernel kills it when we exit, however we exit (PR_SET_PDEATHSIG).
    """
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded here: the child may not import after fork
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl: nobody would kill us
            os._exit(1)

    try:
        version = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=True, timeout=DYNOXIDE_STARTUP_S
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:  # not executable here (a noexec mount?), corrupt
        raise RuntimeError(f"Dynoxide did not start: {binary} --version failed: {exc}") from exc
    for _ in range(DYNOXIDE_ATTEMPTS):
        chosen = port or _free_port()
        process = subprocess.Popen(
            [binary, "serve", "--host", "127.0.0.1", "--port", str(chosen)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        assert process.stderr is not None
        # It says so once it listens, or why it cannot; a start that says neither in time is killed, which
        # ends the output being read.
        watchdog = threading.Timer(DYNOXIDE_STARTUP_S, process.kill)
        watchdog.start()
        try:
            line = ""
            for line in process.stderr:
                if line.startswith("Dynoxide listening on"):
                    break
        finally:
            watchdog.cancel()
        if line.startswith("Dynoxide listening on"):
            # Whatever else it says goes to our stderr; a pipe left unread would block it once full.
            threading.Thread(
                target=shutil.copyfileobj, args=(process.stderr, sys.stderr), daemon=True
            ).start()
            return Dynoxide(process, f"http://127.0.0.1:{chosen}", version)
        process.wait()
        if port:
            break
    raise RuntimeError(f"Dynoxide did not start: {line.strip() or f'exit code {process.returncode}'}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def aws_env(endpoint: str, dynamodb_endpoint: str | None, env: Mapping[str, str] | None = None) -> str:
    """`.imagegate/aws-env`: what the admin CLI (or the AWS CLI) needs to reach this stack, for `.`: the
    credentials and region the stack runs with (`env`, where set), since moto keeps state per region."""
    env = env or {}
    names = {**LOCAL_CREDENTIALS, **({"AWS_REGION": env["AWS_REGION"]} if env.get("AWS_REGION") else {})}
    credentials = " ".join(f"{name}={env.get(name, value)}" for name, value in names.items())
    # A shell that sourced an earlier stack's file must not keep a DynamoDB endpoint this one lacks.
    dynamodb = (
        f"export {DYNAMODB_ENDPOINT_ENV}={dynamodb_endpoint}"
        if dynamodb_endpoint
        else f"unset {DYNAMODB_ENDPOINT_ENV}"
    )
    return f"export AWS_ENDPOINT_URL={endpoint} {credentials}\n{dynamodb}\n"


def dynamodb_line(
    dynamodb: Dynoxide | None, emulated: bool, env: Mapping[str, str], failed: str | None = None
) -> str:
    """The banner's account of which DynamoDB this stack uses (bench/local_stack.py reads it); `failed`: why
    Dynoxide is not serving (it did not start, or its installer left no binary)."""
    if dynamodb is not None:
        return f"dynamodb: {dynamodb.version} at {dynamodb.endpoint} (moto serves S3, SQS and EventBridge)"
    if not emulated:
        return f"dynamodb: at {env.get(DYNAMODB_ENDPOINT_ENV) or env.get('AWS_ENDPOINT_URL')}"
    forced = env.get("IMAGEGATE_DYNAMODB") == "moto"
    why = "IMAGEGATE_DYNAMODB=moto" if forced else "Dynoxide is not installed: `make install` says why"
    if failed and not forced:
        why = failed
    return f"dynamodb: moto's, at the same endpoint ({why})"


def provision(aws: AWSClients, settings: Settings, *, stream: bool = True) -> None:
    """Create the table and bucket as template.yaml declares them, if they do not exist yet (`stream`: with
    the table's stream, as deployed)."""
    provision_table(aws.dynamodb, settings.table, stream=stream)
    s3 = aws.s3
    if settings.bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=settings.bucket)
        s3.put_bucket_encryption(
            Bucket=settings.bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )


def provision_table(db: Any, table: str, *, stream: bool = True) -> None:
    """Create the table as template.yaml declares it (its index and stream), if it does not exist yet."""
    if table not in db.list_tables()["TableNames"]:
        # The usage counters are kept from the stream (money/usage.py; local/streams.py polls it here).
        streams = {"StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}}
        db.create_table(
            TableName=table,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
                {"AttributeName": "open_shard", "AttributeType": "S"},
                {"AttributeName": "open_since", "AttributeType": "N"},
            ],
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": OPEN_INDEX,
                    "KeySchema": [
                        {"AttributeName": "open_shard", "KeyType": "HASH"},
                        {"AttributeName": "open_since", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            **(streams if stream else {}),
        )
        db.get_waiter("table_exists").wait(TableName=table)


JOBS_QUEUE = "imagegate-jobs"
WEBHOOK_QUEUE = "imagegate-webhooks"
WEBHOOK_VISIBILITY_S = 360  # template.yaml: WebhookDeliveryQueue


def provision_queue(aws: AWSClients, name: str, *, visibility_s: int, max_receives: int) -> str:
    """A queue and its dead-letter queue as template.yaml declares them; the queue's URL."""
    sqs = aws.sqs
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receives)}
    return sqs.create_queue(
        QueueName=name,
        Attributes={"VisibilityTimeout": str(visibility_s), "RedrivePolicy": json.dumps(redrive)},
    )["QueueUrl"]


def provision_jobs_queue(aws: AWSClients, settings: Settings, name: str = JOBS_QUEUE) -> str:
    """The jobs queue and its dead-letter queue; the queue's URL."""
    visibility = visibility_timeout(settings.worker_timeout_seconds)
    return provision_queue(aws, name, visibility_s=visibility, max_receives=JOB_MAX_DELIVERIES)


def provision_webhook_queue(aws: AWSClients, name: str = WEBHOOK_QUEUE) -> str:
    """The webhook delivery queue and its dead-letter queue; the queue's URL."""
    from imagegate.jobs.webhooks import MAX_RECEIVES

    return provision_queue(aws, name, visibility_s=WEBHOOK_VISIBILITY_S, max_receives=MAX_RECEIVES)


WEBHOOK_KEY_ALIAS = "alias/imagegate-webhooks"


def provision_webhook_key(aws: AWSClients, alias: str = WEBHOOK_KEY_ALIAS) -> str:
    """The KMS key that seals webhook secrets (template.yaml: WebhookSecretsKey), made once; its ARN."""
    kms = aws.client("kms")
    try:
        return str(kms.describe_key(KeyId=alias)["KeyMetadata"]["Arn"])
    except kms.exceptions.NotFoundException:
        arn = kms.create_key(Description="imagegate webhook secrets (make serve)")["KeyMetadata"]["Arn"]
        kms.create_alias(AliasName=alias, TargetKeyId=arn)
        return str(arn)


# botocore's events after a message is sent through a client: the queue holds it by then.
SENT_EVENTS = ("after-call.sqs.SendMessage", "after-call.sqs.SendMessageBatch")


class LocalWorker:
    """The worker function as `make serve` runs it: threads that poll the local jobs queue and hand each
    message, as the SQS event Lambda would get, to the worker's own handler (lambda_app.batch_handler);
    messages it did not report failed are deleted, as Lambda's event source mapping deletes them. A failed
    one comes back after the visibility timeout and, after JOB_MAX_DELIVERIES, goes to the dead-letter queue.

    Short polls, never long ones: the emulator serves one request at a time (emulator.py), and a long poll
    would hold every other AWS call back for its wait. Idle, a thread waits `idle_s`, doubled after each
    empty poll up to `max_idle_s` (an idle stack's polls cost the emulator and this process CPU that requests
    want), and wakes at once when this process sends a message through the same SQS client (a job queued,
    a webhook to deliver): locally queued work starts without the wait.
    """

    def __init__(
        self,
        handler: Callable[[dict[str, Any], Any], dict[str, Any]],
        sqs: Any,
        queue_url: str,
        *,
        threads: int = 2,
        idle_s: float = 0.2,
        max_idle_s: float = 1.0,
    ) -> None:
        self._handler = handler
        self._sqs = sqs
        self._queue_url = queue_url
        self._threads = threads
        self._idle_s = idle_s
        self._max_idle_s = max_idle_s
        self._stop = threading.Event()
        self._woken = threading.Event()
        self._running: list[threading.Thread] = []
        self._hook = f"imagegate-local-worker-{id(self)}"

    def start(self) -> None:
        self._stop.clear()
        for event in SENT_EVENTS:
            self._sqs.meta.events.register(event, self._wake, unique_id=self._hook)
        for i in range(self._threads):
            thread = threading.Thread(target=self._loop, name=f"imagegate-worker-{i}", daemon=True)
            thread.start()
            self._running.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._woken.set()
        for event in SENT_EVENTS:
            self._sqs.meta.events.unregister(event, unique_id=self._hook)
        for thread in self._running:
            thread.join()
        self._running.clear()

    def _wake(self, **_: Any) -> None:
        self._woken.set()

    def poll(self) -> int:
        """Receive and run at most one message; how many were received."""
        received = self._sqs.receive_message(
            QueueUrl=self._queue_url, MaxNumberOfMessages=1, AttributeNames=["All"]
        ).get("Messages", [])
        if not received:
            return 0
        event = {"Records": [_sqs_record(m, self._queue_url) for m in received]}
        failed = {f["itemIdentifier"] for f in self._handler(event, None).get("batchItemFailures", [])}
        for message in received:
            if message["MessageId"] not in failed:
                self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"])
        return len(received)

    def _loop(self) -> None:
        idle = self._idle_s
        while not self._stop.is_set():
            try:
                handled = self.poll()
            except Exception:
                logging.getLogger("imagegate").exception("local worker poll failed")
                handled = 0
            if handled:
                idle = self._idle_s
                continue
            # A message sent while we polled has set the event already: the wait returns at once.
            woken = self._woken.wait(idle)
            self._woken.clear()
            idle = self._idle_s if woken else min(idle * 2, self._max_idle_s)


def _sqs_record(message: dict[str, Any], queue_url: str) -> dict[str, Any]:
    """One received message in the shape of a record of Lambda's SQS event."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": message.get("MessageAttributes", {}),
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_url,
        "awsRegion": "us-east-1",
    }


def seed_dev_key(
    accounts: Accounts, api_key: str | None, balance_usd: str, *, admin: bool = False
) -> tuple[str, bool]:
    """Fund a dev account and key (`admin`: it may manage the account's keys, as the console does); returns
    (key, created). A key that already works is left as it is, so seeding the same key at every start is
    idempotent."""
    if api_key:
        try:
            accounts.authenticate(f"Bearer {api_key}")
            return api_key, False
        except APIError:
            pass  # not issued yet (a revoked one makes create_key below fail loudly)
    account_id = accounts.create_account(usd_to_micros(balance_usd), label="dev", actor="devserver")
    return accounts.create_key(account_id, label="dev", api_key=api_key, admin=admin), True


def dev_key(env: dict[str, str] | os._Environ, state_dir: Path) -> str:
    """IMAGEGATE_DEV_KEY, else the key kept in `state_dir/dev-key`, else a new one, kept there (mode 600)."""
    if env.get("IMAGEGATE_DEV_KEY"):
        return env["IMAGEGATE_DEV_KEY"]
    path = state_dir / "dev-key"
    if path.exists():
        return path.read_text().strip()
    key = f"sk-ig-dev-{secrets.token_hex(20)}"
    make_state_dir(state_dir)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key


def make_state_dir(state_dir: Path) -> None:
    """The state directory, git-ignored as a whole."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / ".gitignore").write_text("*\n")


def bind(port: int, what: str, variable: str) -> socket.socket:
    """A listening socket on 127.0.0.1:`port`, or exit with a message naming the variable that moves it."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP (accepted ones
    # inherit it); without it a response's second write waits for the client's delayed ACK, ~40 ms.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        print(
            f"imagegate: cannot serve {what} on 127.0.0.1:{port}: {exc.strerror}. Another `make serve`?"
            f" Stop it, or choose another port: {variable}={port + 1} make serve",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    sock.listen(128)
    return sock


FAKE_STRIPE_PREFIX = "/fake-stripe"


def fake_stripe(env: dict[str, str] | os._Environ, port: int) -> FakeStripe | None:
    """The fake Stripe make serve answers top-ups with, under FAKE_STRIPE_PREFIX on the API's own port, unless
    IMAGEGATE_STRIPE_SECRET_KEY names a real (test) Stripe account. Its keys go into the environment, where
    the webhook and checkout read them (credentials.py), as they would read a real account's."""
    from imagegate.local.fake_stripe import FakeStripe

    if env.get("IMAGEGATE_STRIPE_SECRET_KEY"):
        return None
    secret, webhook_secret = "sk_test_fake_" + secrets.token_hex(8), "whsec_fake_" + secrets.token_hex(16)
    env["IMAGEGATE_STRIPE_SECRET_KEY"], env["IMAGEGATE_STRIPE_WEBHOOK_SECRET"] = secret, webhook_secret
    base = f"http://127.0.0.1:{port}"
    return FakeStripe(
        secret,
        webhook_secret,
        webhook_url=f"{base}/v1/billing/stripe/webhook",
        base_url=base + FAKE_STRIPE_PREFIX,
    )


def mounted(app: Any, prefix: str, other: Any) -> Any:
    """`app`, with `other` answering every path under `prefix` (as its ASGI root path)."""

    async def dispatch(scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"].startswith(prefix + "/"):
            await other({**scope, "root_path": scope.get("root_path", "") + prefix}, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch


def settings_balance(env: dict[str, str] | os._Environ) -> str:
    return env.get("IMAGEGATE_DEV_BALANCE", "10")


def main() -> None:
    for name, value in LOCAL_CREDENTIALS.items():
        os.environ.setdefault(name, value)
    port = int(os.environ.get("PORT", "8000"))
    # Both ports first: a port in use stops us before any key is printed.
    api_socket = bind(port, "the API", "PORT")
    port = api_socket.getsockname()[1]  # PORT=0: whichever port is free
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    emulator = None
    dynamodb: Dynoxide | None = None
    dynoxide_failed: str | None = None
    dynoxide = None if endpoint else dynoxide_binary(os.environ)
    if not endpoint:
        aws_port = int(os.environ.get("IMAGEGATE_AWS_PORT", "4566"))
        bind(aws_port, "the AWS emulation", "IMAGEGATE_AWS_PORT").close()
        os.environ.pop(DYNAMODB_ENDPOINT_ENV, None)  # ours, not one a shell kept from an earlier stack
        dynamodb_port = aws_port + 1 if aws_port else 0
        if dynoxide and dynamodb_port:
            bind(dynamodb_port, "DynamoDB (Dynoxide)", "IMAGEGATE_AWS_PORT").close()
        # moto in a child process imports on the other core while this one imports the app.
        emulator = subprocess.Popen(
            [sys.executable, "-c", EMULATOR_CHILD, str(aws_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            # glibc gives each of the emulator's connection threads an arena of its own; two keep its memory
            # from fragmenting across them under hours of load (a third less growth per request).
            env={**os.environ, "MALLOC_ARENA_MAX": "2"},
        )
        if dynoxide:
            try:
                dynamodb = start_dynoxide(dynoxide, dynamodb_port)
                os.environ[DYNAMODB_ENDPOINT_ENV] = dynamodb.endpoint
            except RuntimeError as exc:  # moto's DynamoDB serves instead, and the banner says why
                dynoxide_failed = str(exc)

    import uvicorn
    from aws_lambda_powertools.logging import Logger

    from imagegate.http.api import create_app
    from imagegate.http.lambda_app import (
        batch_handler,
        build_jobs,
        build_webhooks,
        sqs_batch,
        stream_batch,
        wrap,
    )
    from imagegate.local.streams import LocalStream
    from imagegate.service import Service

    if emulator is not None:
        port_line = emulator.stdout.readline().strip() if emulator.stdout else ""
        if not port_line.isdigit():
            code = emulator.wait()
            print(f"imagegate: the AWS emulation did not start (exit code {code})", file=sys.stderr)
            raise SystemExit(1)
        endpoint = f"http://127.0.0.1:{port_line}"
        os.environ["AWS_ENDPOINT_URL"] = endpoint

    settings = Settings.from_env()
    aws = AWSClients(settings, endpoint, endpoints_from_env(os.environ))
    # 0: the stream is neither read nor made. On AWS the usage function is a Lambda of its own, and an
    # emulator's writes slow as its stream grows (Dynoxide's: 2.5 to 4 ms a transaction over 3,000), so a
    # benchmark timing the request path leaves it out (bench/http_compare.py).
    interval = float(os.environ.get(STREAM_INTERVAL_ENV, "0.5"))
    provision(aws, settings, stream=interval > 0)
    if not settings.jobs_queue_url:
        settings = replace(settings, jobs_queue_url=provision_jobs_queue(aws, settings))
    if not settings.webhook_queue_url:
        settings = replace(settings, webhook_queue_url=provision_webhook_queue(aws))
    if not settings.webhook_key_id:
        settings = replace(settings, webhook_key_id=provision_webhook_key(aws))
    # moto serves EventBridge's default bus: finished jobs' events go through the deployed code path.
    settings = replace(settings, event_bus=settings.event_bus or "default")
    stripe = fake_stripe(os.environ, port)
    if stripe is not None:
        settings = replace(settings, stripe_api_base=stripe.base_url)
    logger = Logger(service="imagegate")
    # Quiet while starting, so that the banner is not interleaved with JSON log lines; requests log after.
    level = logger.log_level
    logger.setLevel(logging.WARNING)
    service = Service(settings, aws, logger)
    state_dir = Path(os.environ.get("IMAGEGATE_DEV_STATE", ".imagegate"))
    key, _ = seed_dev_key(
        service.accounts, dev_key(os.environ, state_dir), settings_balance(os.environ), admin=True
    )
    make_state_dir(state_dir)
    (state_dir / "aws-env").write_text(
        aws_env(endpoint, os.environ.get(DYNAMODB_ENDPOINT_ENV), os.environ)
        + f"export IMAGEGATE_WEBHOOK_KEY_ID={settings.webhook_key_id}\n"
    )
    account = service.accounts.authenticate(f"Bearer {key}")
    balance = micros_to_usd(service.accounts.balance(account.account_id) or 0)
    router = service.router
    app = wrap(create_app(service, jobs=build_jobs(service)), settings)
    if stripe is not None:
        app = mounted(app, FAKE_STRIPE_PREFIX, stripe.app)
    # The worker runs jobs under the worker's timeout and budget, as the worker function does.
    worker_jobs = build_jobs(Service(settings.for_worker(), aws, logger))
    worker = LocalWorker(batch_handler(worker_jobs), aws.sqs, settings.jobs_queue_url)
    worker.start()
    # Webhook deliveries, with their retries, as the delivery function makes them.
    delivery = sqs_batch(build_webhooks(aws, settings).record_handler())
    deliveries = LocalWorker(delivery, aws.sqs, settings.webhook_queue_url, threads=1)
    deliveries.start()
    # The usage counters, from the table's stream, as the usage function keeps them.
    if interval > 0:
        LocalStream(
            stream_batch(aws, settings.table, logger),
            aws.dynamodb,
            aws.client("dynamodbstreams"),
            settings.table,
            interval_s=interval,
        ).start()
    logger.setLevel(level)
    lines = [
        f"imagegate dev stack: AWS emulation at {endpoint}, table {settings.table}, bucket {settings.bucket}",
        dynamodb_line(dynamodb, emulator is not None, os.environ, dynoxide_failed or dynoxide_unavailable()),
        "provider: local serves every model (no upstream credentials are configured; drawings, not AI)"
        if router.local_only
        else f"providers: {', '.join(router.configured)} (routes: docs/models.md)",
        f"base URL: http://127.0.0.1:{port}/v1   account {account.account_id}, balance {balance}",
        f"dev key:  {key}",
        f"          (kept in {state_dir / 'dev-key'}: the same key after a restart; balances restart at"
        f" ${settings_balance(os.environ)})",
        f"try:      export OPENAI_BASE_URL=http://127.0.0.1:{port}/v1 OPENAI_API_KEY={key}",
        f"jobs:     queue {settings.jobs_queue_url}, worker in this process"
        " (send 'Prefer: respond-async'; docs/jobs.md)",
        f"webhooks: queue {settings.webhook_queue_url}, deliveries in this process; events on the"
        f" '{settings.event_bus}' bus (docs/jobs.md)",
        f"admin:    in another shell: . {state_dir / 'aws-env'}; .venv/bin/imagegate --help (docs/money.md)",
        f"console:  http://127.0.0.1:{port}/console (paste the dev key: an admin key of its account)",
        f"stripe:   the fake at {stripe.base_url}, key {stripe.secret_key} (docs/selling.md)"
        if stripe is not None
        else "stripe:   Stripe's API with IMAGEGATE_STRIPE_SECRET_KEY (webhooks: docs/selling.md)",
    ]
    print("\n".join(lines), flush=True)
    config = uvicorn.Config(app, log_level="warning")
    uvicorn.Server(config).run(sockets=[api_socket])


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C while starting: no traceback, the shell's usual status
        raise SystemExit(130) from None
