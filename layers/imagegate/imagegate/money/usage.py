"""Usage counters kept from the table's stream, off the request path: a pure fold, one write per counter.

A request's settle moves its REQUEST item from `reserved` to `settled` or `refunded` (billing.py), and the
table's stream (NEW_AND_OLD_IMAGES) carries that move. The usage function (template.yaml: UsageFunction,
lambda_app.usage_handler; `make serve` polls the same stream, local/streams.py) hands each batch of stream
records to `UsageCounters.apply`: every record that closes a request adds one request and its images,
charge and refund to the counter of its account, key, model and UTC day (ledger.usage_update's item,
`USAGE#<account_id>` / `<yyyy-mm-dd>#<key_id>#<model>`), with one UpdateItem per counter per batch.

Exactly once, although Lambda delivers a stream at least once (a failed batch comes back, perhaps longer)
and batches of other shards write the same counters at the same time. Each counter keeps, per source
partition (the pk of the REQUEST items it counted), a watermark: the highest stream SequenceNumber of that
partition it has counted, in an attribute `w_<digest of the pk>`. A batch adds only the records above
their partition's watermark and moves the watermark in the same UpdateItem, on the condition that it is
still below the first record added, so a duplicate or concurrent delivery of the same records fails the
condition and is read again instead of counted twice; different partitions' watermarks are different
attributes, and ADD commutes, so shards never block each other.

This relies on DynamoDB Streams' ordering: the records of one item appear in the order of its changes, and
those of one partition key in SequenceNumber order within a shard lineage, which Lambda processes in order
(a parent shard before its children; with ParallelizationFactor > 1, still in order per partition key).
A partition's counted records are then exactly those at or below its watermark. An operator who splits
REQUEST items of one partition key across shards otherwise (none does today) breaks this.

Only REQUEST items that carry `account_id` are counted: items written before the REQUEST items moved to
partitions of their own lack it, and their settle still adds to the counters itself.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from imagegate.money.ledger import usage_key, usage_update
from imagegate.table import REQUEST_PREFIX

CLOSED = ("settled", "refunded")
WATERMARK = "w_"
# Stream SequenceNumbers are decimal strings of up to 40 digits: more than a DynamoDB number holds (38), so
# watermarks are strings, zero-padded so that DynamoDB's comparison of strings is the numbers' comparison.
SEQUENCE_DIGITS = 40
# A condition fails only when another delivery of the same partition's records wrote first: one read, then
# one more try, settles it; more is left to the stream's own retry of the batch.
APPLY_ATTEMPTS = 3


@dataclass(frozen=True, order=True)
class Counter:
    """One usage counter item: an account's requests of one key and model on one UTC day."""

    account_id: str
    day: date
    key_id: str
    model: str


@dataclass(frozen=True)
class Closing:
    """A request's move from reserved to settled or refunded, as one stream record carries it."""

    counter: Counter
    source: str  # the REQUEST item's partition key: whose watermark orders this record
    sequence: str  # the record's SequenceNumber, as the stream gave it (the retry point Lambda takes back)
    images: int
    charged: int
    refunded: int

    @property
    def position(self) -> int:
        return int(self.sequence)


@dataclass(frozen=True)
class Applied:
    """What one batch did: the closings it counted (not those counted before), in how many counter writes,
    and when a counter could not be written, the SequenceNumber to deliver the batch again from and why."""

    counted: int = 0
    writes: int = 0
    retry_from: str | None = None
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delta:
    """What one counter's UpdateItem adds, and the watermarks it moves: {source: (floor, new watermark)},
    `floor` being the lowest sequence added from that source (its watermark must still be below it)."""

    requests: int
    images: int
    charged: int
    refunded: int
    watermarks: dict[str, tuple[int, int]]


def closing(record: Mapping[str, Any]) -> Closing | None:
    """The request a stream record closes; None for every other record (template.yaml's FilterCriteria
    lets only these reach the function on AWS; `make serve` hands it the whole stream)."""
    change = record.get("dynamodb") or {}
    old, new = change.get("OldImage") or {}, change.get("NewImage") or {}
    if record.get("eventName") != "MODIFY" or not _s(new, "sk").startswith(REQUEST_PREFIX):
        return None
    if _s(old, "state") != "reserved" or _s(new, "state") not in CLOSED or "account_id" not in new:
        return None
    if "settled_at" not in new:  # a close without its day: nothing to count it under
        raise ValueError(f"{_s(new, 'sk')} closed without settled_at")
    settled = datetime.fromtimestamp(_n(new, "settled_at"), UTC).date()
    return Closing(
        counter=Counter(_s(new, "account_id"), settled, _s(new, "key_id") or "-", _s(new, "model") or "-"),
        source=_s(new, "pk"),
        sequence=change["SequenceNumber"],
        images=_n(new, "images"),
        charged=_n(new, "charged"),
        refunded=_n(new, "refunded"),
    )


def by_counter(closings: Iterable[Closing]) -> dict[Counter, list[Closing]]:
    """Closings grouped by the counter they add to, each group in stream order."""
    groups: dict[Counter, list[Closing]] = defaultdict(list)
    for c in closings:
        groups[c.counter].append(c)
    return {counter: sorted(group, key=lambda c: c.position) for counter, group in sorted(groups.items())}


def fold(closings: Iterable[Closing], watermarks: Mapping[str, int]) -> Delta | None:
    """One counter's closings not counted yet (above their source's watermark), summed; None when every one
    was counted already."""
    requests = images = charged = refunded = 0
    moved: dict[str, tuple[int, int]] = {}
    for c in closings:
        if c.position <= watermarks.get(c.source, -1):
            continue
        requests, images = requests + 1, images + c.images
        charged, refunded = charged + c.charged, refunded + c.refunded
        floor, top = moved.get(c.source, (c.position, c.position))
        moved[c.source] = (min(floor, c.position), max(top, c.position))
    if not moved:
        return None
    return Delta(requests, images, charged, refunded, moved)


def watermark_name(source: str) -> str:
    """The counter attribute holding `source`'s watermark: short and fixed-length, whatever the pk."""
    return WATERMARK + hashlib.sha256(source.encode()).hexdigest()[:12]


class UsageCounters:
    """Adds batches of stream records to the usage counters, exactly once (the module's docstring)."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._dynamodb = dynamodb
        self._table = table

    def apply(self, records: Sequence[Mapping[str, Any]]) -> Applied:
        """Count a batch of stream records. A counter that could not be written makes the batch come again
        from the lowest SequenceNumber of its records: everything before that is counted, and what after it
        was counted is skipped the next time by its watermark."""
        counted = writes = 0
        failed: list[Closing] = []
        errors: list[str] = []
        closings = []
        for record in records:
            try:
                found = closing(record)
            except (
                KeyError,
                TypeError,
                ValueError,
            ) as exc:  # never countable: retrying it would stall the shard
                errors.append(f"skipped a record that closes nothing countable: {exc!r}")
                continue
            if found is not None:
                closings.append(found)
        for counter, group in by_counter(closings).items():
            try:
                delta = self._apply(counter, group)
            except Exception as exc:  # a throttle, a timeout: the stream delivers these records again
                failed.append(group[0])
                errors.append(f"{counter.account_id} {counter.day} {counter.key_id} {counter.model}: {exc!r}")
                continue
            if delta is not None:
                counted, writes = counted + delta.requests, writes + 1
        retry_from = min(failed, key=lambda c: c.position).sequence if failed else None
        return Applied(counted, writes, retry_from, tuple(errors))

    def _apply(self, counter: Counter, group: list[Closing]) -> Delta | None:
        """Write one counter's closings not counted yet; what was written (None: nothing left to count)."""
        watermarks: dict[str, int] = {}  # first try: nothing counted yet, the usual case (no read)
        attempts = 1
        while (delta := fold(group, watermarks)) is not None:
            try:
                self._dynamodb.update_item(**self._update(counter, delta))
                return delta
            except self._dynamodb.exceptions.ConditionalCheckFailedException:
                if attempts == APPLY_ATTEMPTS:
                    raise
                attempts += 1
                watermarks = self._watermarks(counter, {c.source for c in group})
        return None

    def _update(self, counter: Counter, delta: Delta) -> dict[str, Any]:
        update = usage_update(
            self._table,
            counter.day,
            counter.account_id,
            counter.key_id,
            counter.model,
            requests=delta.requests,
            images=delta.images,
            charged=delta.charged,
            refunded=delta.refunded,
        )["Update"]
        names, values, sets, conditions = {}, dict(update["ExpressionAttributeValues"]), [], []
        for i, (source, (floor, top)) in enumerate(sorted(delta.watermarks.items())):
            names[f"#w{i}"] = watermark_name(source)
            values[f":floor{i}"] = {"S": _padded(floor)}
            values[f":top{i}"] = {"S": _padded(top)}
            sets.append(f"#w{i} = :top{i}")
            conditions.append(f"(attribute_not_exists(#w{i}) OR #w{i} < :floor{i})")
        # usage_update's expression ends in its SET clause: the watermarks join it.
        return {
            **update,
            "UpdateExpression": f"{update['UpdateExpression']}, {', '.join(sets)}",
            "ConditionExpression": " AND ".join(conditions),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }

    def _watermarks(self, counter: Counter, sources: set[str]) -> dict[str, int]:
        """The counter's watermarks of `sources`, read consistently (absent: nothing counted)."""
        names = {f"#w{i}": watermark_name(s) for i, s in enumerate(sorted(sources))}
        item = self._dynamodb.get_item(
            TableName=self._table,
            Key=usage_key(counter.account_id, counter.day, counter.key_id, counter.model),
            ProjectionExpression=", ".join(names),
            ExpressionAttributeNames=names,
            ConsistentRead=True,
        ).get("Item", {})
        return {s: int(item[watermark_name(s)]["S"]) for s in sources if watermark_name(s) in item}


def _padded(sequence: int) -> str:
    return f"{sequence:0{SEQUENCE_DIGITS}d}"


def _s(image: Mapping[str, Any], name: str) -> str:
    return image[name]["S"] if name in image else ""


def _n(image: Mapping[str, Any], name: str) -> int:
    return int(image[name]["N"]) if name in image else 0
