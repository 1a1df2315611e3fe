"""The table's stream in `make serve`: what Lambda's event source mapping does for the usage function.

On AWS, Lambda reads the table's stream and hands batches to the usage function (template.yaml:
UsageFunction), restarting a shard at the record the function reports failed. Here `LocalStream` reads the
emulator's stream (Dynoxide and moto both keep one, devserver.provision_table turns it on) and hands the
same batches, in the same event shape, to the same handler (lambda_app.stream_batch). It hands over every
record: the handler ignores what the template's FilterCriteria would not let through.

`drain()` reads every shard to its end, so a test calls it instead of waiting; the dev server calls it every
`interval_s` from a thread of its own. A batch with a failure is read again from the failed record by the
next drain, as Lambda retries it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

BATCH_SIZE = 1000  # template.yaml: the usage function's BatchSize

logger = logging.getLogger("imagegate")


class LocalStream:
    def __init__(
        self,
        handler: Callable[[dict[str, Any], Any], dict[str, Any]],
        dynamodb: Any,
        streams: Any,
        table: str,
        *,
        interval_s: float = 0.5,
    ) -> None:
        """`streams`: a DynamoDB Streams client on the same endpoint as `dynamodb` (AWSClients gives one)."""
        self._handler = handler
        self._dynamodb = dynamodb
        self._streams = streams
        self._table = table
        self._interval_s = interval_s
        self._arn: str | None = None
        self._after: dict[str, str] = {}  # shard id -> the last sequence number handled
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def drain(self) -> int:
        """Hand every record not handled yet to the handler, shard by shard, until none is left; how many
        were handled (a failed batch stops its shard until the next drain, as Lambda's retry would)."""
        with self._lock:
            if self._arn is None:
                self._arn = self._dynamodb.describe_table(TableName=self._table)["Table"]["LatestStreamArn"]
            return sum(self._read(shard) for shard in self._shards())

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="imagegate-usage-stream", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.drain()
            except Exception:
                logger.exception("local usage stream: drain failed")

    def _shards(self) -> list[str]:
        """The stream's shards, parents first (as DescribeStream lists them)."""
        shards: list[str] = []
        kwargs: dict[str, Any] = {"StreamArn": self._arn}
        while True:
            description = self._streams.describe_stream(**kwargs)["StreamDescription"]
            shards += [shard["ShardId"] for shard in description.get("Shards", [])]
            if not description.get("LastEvaluatedShardId"):
                return shards
            kwargs["ExclusiveStartShardId"] = description["LastEvaluatedShardId"]

    def _read(self, shard: str) -> int:
        after = self._after.get(shard)
        position = (
            {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": after}
            if after
            else {"ShardIteratorType": "TRIM_HORIZON"}
        )
        iterator = self._streams.get_shard_iterator(StreamArn=self._arn, ShardId=shard, **position)
        iterator = iterator.get("ShardIterator")
        handled = 0
        while iterator:
            page = self._streams.get_records(ShardIterator=iterator, Limit=BATCH_SIZE)
            records = page.get("Records", [])
            if not records:
                return handled
            answer = self._handler({"Records": [self._lambda_record(r) for r in records]}, None)
            sequences = [r["dynamodb"]["SequenceNumber"] for r in records]
            failed = [f["itemIdentifier"] for f in answer.get("batchItemFailures", [])]
            done = sequences.index(min(failed, key=int)) if failed else len(records)
            if done:
                self._after[shard] = sequences[done - 1]
            handled += done
            if failed:
                logger.warning("local usage stream: a batch failed; the next drain reads it again")
                return handled
            iterator = page.get("NextShardIterator")
        return handled

    def _lambda_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """A GetRecords record in the shape Lambda hands the function (epoch seconds, the stream's ARN)."""
        change = dict(record["dynamodb"])
        created = change.get("ApproximateCreationDateTime")
        if isinstance(created, datetime):
            change["ApproximateCreationDateTime"] = created.timestamp()
        return {**record, "dynamodb": change, "eventSourceARN": self._arn}
