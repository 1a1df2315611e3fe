"""`make serve`: the whole stack on one machine, offline.

S3 and DynamoDB come from moto's server on 127.0.0.1:4566 unless AWS_ENDPOINT_URL points elsewhere
(LocalStack, say); the table and bucket are created, a funded dev key is seeded, and uvicorn serves all
three routes on 127.0.0.1:$PORT.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

from .accounts import Accounts
from .aws import AWSClients
from .config import Settings
from .errors import APIError
from .money import micros_to_usd, usd_to_micros
from .table import OPEN_INDEX

LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def start_aws_emulator(port: int) -> BaseWSGIServer:
    """Serve moto's S3 and DynamoDB on 127.0.0.1:`port` (0: any free one) from a daemon thread.

    Requests are served one at a time. moto applies a TransactWriteItems in several steps, so two served
    at once can interleave and overdraw a balance that real DynamoDB, which isolates each request, protects.
    """
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request otherwise
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def one_at_a_time(environ: dict, start_response: Any) -> list[bytes]:
        with lock:
            return list(app(environ, start_response))

    server = make_server("127.0.0.1", port, one_at_a_time, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def provision(aws: AWSClients, settings: Settings) -> None:
    """Create the table and bucket as template.yaml declares them, if they do not exist yet."""
    db = aws.dynamodb
    if settings.table not in db.list_tables()["TableNames"]:
        db.create_table(
            TableName=settings.table,
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
        )
        db.get_waiter("table_exists").wait(TableName=settings.table)
    s3 = aws.s3
    if settings.bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=settings.bucket)
        s3.put_bucket_encryption(
            Bucket=settings.bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )


def seed_dev_key(accounts: Accounts, api_key: str | None, balance_usd: str) -> tuple[str, bool]:
    """Fund a dev account and key; returns (key, created). A key that already works is left as it is."""
    if api_key:
        try:
            accounts.authenticate(f"Bearer {api_key}")
            return api_key, False
        except APIError:
            pass  # not issued yet (a revoked one makes create_key below fail loudly)
    account_id = accounts.create_account(usd_to_micros(balance_usd), label="dev", actor="devserver")
    return accounts.create_key(account_id, label="dev", api_key=api_key), True


def main() -> None:
    for name, value in LOCAL_CREDENTIALS.items():
        os.environ.setdefault(name, value)
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        emulator = start_aws_emulator(int(os.environ.get("IMAGEGATE_AWS_PORT", "4566")))
        endpoint = f"http://127.0.0.1:{emulator.server_address[1]}"
        os.environ["AWS_ENDPOINT_URL"] = endpoint

    import uvicorn
    from aws_lambda_powertools.logging import Logger

    from .api import create_app
    from .service import Service

    settings = Settings.from_env()
    aws = AWSClients(settings, endpoint)
    provision(aws, settings)
    service = Service(settings, aws, Logger(service="imagegate"))
    key, created = seed_dev_key(
        service.accounts, os.environ.get("IMAGEGATE_DEV_KEY"), os.environ.get("IMAGEGATE_DEV_BALANCE", "10")
    )
    port = int(os.environ.get("PORT", "8000"))
    account = service.accounts.authenticate(f"Bearer {key}")
    balance = micros_to_usd(service.accounts.balance(account.account_id) or 0)
    print(
        f"imagegate dev stack: AWS emulation at {endpoint}, table {settings.table}, bucket {settings.bucket}"
    )
    router = service.router
    if router.local_only:
        print("provider: local serves every model (no upstream credentials are configured)")
    else:
        print(f"providers: {', '.join(router.configured)} (routes: README, 'Routes')")
    print(f"base URL: http://127.0.0.1:{port}/v1   account {account.account_id}, balance {balance}")
    if created and not os.environ.get("IMAGEGATE_DEV_KEY"):
        print(f"dev key (shown once): {key}")
    sys.stdout.flush()
    uvicorn.run(create_app(service), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
