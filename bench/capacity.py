"""DynamoDB capacity as AWS would bill it, counted from the calls an emulator serves, and their price.

Neither emulator reports consumed capacity the way DynamoDB bills it, so this module reads the items each
write touches before and after it (strongly consistent GetItems that are not counted) and applies
DynamoDB's published rules:

- an item's size: the UTF-8 length of each attribute name plus its value (string: UTF-8 bytes; number:
  1 byte per 2 significant digits + 1; binary: its bytes; boolean, null: 1; list, map: 3 + 1 per element
  + the elements; sets: their elements);
- a write (Put, Update, Delete) costs ceil(size / 1 KB) write units, at least 1, where size is the larger
  of the item before and after the write; inside TransactWriteItems every action costs twice that
  (prepare and commit), ConditionCheck included (it takes part in both phases like a write);
- a global secondary index costs one more write per table write that puts an item into the index (its
  key attributes become present), updates an item in it (any projected attribute changes: projection ALL),
  or removes it from the index; two (a delete and a put) when the index key changes. Each is
  ceil(index entry size / 1 KB) units, the entry being the whole item (projection ALL). Index writes are
  not doubled by a transaction (they are applied once, asynchronously, after the commit);
- a read costs ceil(size / 4 KB) read units (at least 1) when strongly consistent, half that when
  eventually consistent; a Query adds the sizes of the items it returns before rounding.

`Meter.observe` does this for one call; bench/http_compare.py runs it in a proxy in front of the
emulator, tests/unit/test_write_units.py around the in-process client. `Prices` and `cost_per_million`
turn the counts into dollars.
"""

from __future__ import annotations

import base64
import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

KB = 1024
READ_BLOCK = 4 * KB
KEY_ATTRIBUTES = ("pk", "sk")
# template.yaml's one global secondary index (imagegate.table.OPEN_INDEX): the requests still reserved.
INDEXES = {"open": ("open_shard", "open_since")}
WRITES = ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem")
READS = ("GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems")

Item = Mapping[str, Any]  # DynamoDB JSON: {"name": {"S": "value"}, ...}
ReadItem = Callable[[str, Item], Item | None]  # (table, key) -> the item now, strongly consistent


def value_size(value: Mapping[str, Any]) -> int:
    (kind, v) = next(iter(value.items()))
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        return _number_size(v)
    if kind == "B":
        return len(v) if isinstance(v, bytes | bytearray) else len(base64.b64decode(v))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in v)
    if kind == "NS":
        return sum(_number_size(n) for n in v)
    if kind == "BS":
        return sum(len(b) if isinstance(b, bytes | bytearray) else len(base64.b64decode(b)) for b in v)
    if kind == "L":
        return 3 + sum(1 + value_size(e) for e in v)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(e) for k, e in v.items())
    raise ValueError(f"unknown DynamoDB type {kind}")


def _number_size(text: str) -> int:
    digits = str(abs(Decimal(text)).normalize()).replace(".", "").lstrip("0") or "0"
    if "E" in digits:  # normalize() writes large round numbers as 1E+3: keep the significant digits
        digits = digits.split("E")[0]
    return math.ceil(len(digits) / 2) + 1 + (text.startswith("-"))


def item_size(item: Item | None) -> int:
    if not item:
        return 0
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


def units(size: int, block: int = KB) -> int:
    return max(1, math.ceil(size / block))


@dataclass(frozen=True)
class Write:
    """One item an operation writes (or checks, inside a transaction)."""

    table: str
    key: dict[str, Any]
    action: str  # Put, Update, Delete, ConditionCheck
    transactional: bool


@dataclass(frozen=True)
class Written:
    """What one write cost: the item's kind (its key with the ids cut off), sizes and units."""

    kind: str
    action: str
    before: int
    after: int
    table_units: int
    index_units: int


def writes(operation: str, params: Mapping[str, Any]) -> list[Write]:
    if operation == "PutItem":
        return [Write(params["TableName"], _key(params["Item"]), "Put", False)]
    if operation in ("UpdateItem", "DeleteItem"):
        return [Write(params["TableName"], dict(params["Key"]), operation[:-4], False)]
    if operation == "TransactWriteItems":
        out = []
        for entry in params["TransactItems"]:
            ((action, body),) = entry.items()
            key = _key(body["Item"]) if action == "Put" else dict(body["Key"])
            out.append(Write(body["TableName"], key, action, True))
        return out
    if operation == "BatchWriteItem":
        return [
            Write(
                table,
                _key(r["PutRequest"]["Item"]) if "PutRequest" in r else dict(r["DeleteRequest"]["Key"]),
                "Put" if "PutRequest" in r else "Delete",
                False,
            )
            for table, requests in params["RequestItems"].items()
            for r in requests
        ]
    return []


def _key(item: Item) -> dict[str, Any]:
    return {name: item[name] for name in KEY_ATTRIBUTES if name in item}


def kind(key: Mapping[str, Any]) -> str:
    """`ACCOUNT#/REQUEST#`: an item's key without its ids, to say which items a request writes."""
    parts = []
    for name in KEY_ATTRIBUTES:
        text = str(next(iter(key[name].values()))) if name in key else ""
        prefix = re.match(r"[A-Z_]+#?", text)
        parts.append(prefix[0] if prefix else "*")
    return "/".join(parts)


def write_cost(write: Write, before: Item | None, after: Item | None) -> Written:
    size_before, size_after = item_size(before), item_size(after)
    table_units = units(max(size_before, size_after)) * (2 if write.transactional else 1)
    index_units = (
        0
        if write.action == "ConditionCheck"
        else sum(_index_units(before, after, k) for k in INDEXES.values())
    )
    return Written(kind(write.key), write.action, size_before, size_after, table_units, index_units)


def _index_units(before: Item | None, after: Item | None, index_key: tuple[str, ...]) -> int:
    was = bool(before) and all(a in before for a in index_key)
    now = bool(after) and all(a in after for a in index_key)
    if was and now:
        if any(before[a] != after[a] for a in index_key):
            return units(item_size(before)) + units(item_size(after))
        return units(item_size(after)) if before != after else 0
    if now:
        return units(item_size(after))
    if was:
        return units(item_size(before))
    return 0


def read_units(operation: str, params: Mapping[str, Any], response: Mapping[str, Any]) -> float:
    if operation == "GetItem":
        size = item_size(response.get("Item"))
    elif operation in ("Query", "Scan"):
        size = sum(item_size(i) for i in response.get("Items", []))
    else:
        return 0.0
    full = units(size, READ_BLOCK)
    return full if params.get("ConsistentRead") else full / 2


@dataclass
class Tally:
    """Everything observed since the last `reset`: calls by operation, read and write units, and each
    item written, for the report's account of which items a request writes."""

    calls: Counter[str] = field(default_factory=Counter)
    read_units: float = 0.0
    written: list[Written] = field(default_factory=list)

    @property
    def write_units(self) -> int:
        return sum(w.table_units + w.index_units for w in self.written)

    @property
    def index_units(self) -> int:
        return sum(w.index_units for w in self.written)


class Meter:
    """Counts DynamoDB calls and their capacity. Thread-safe for counting; the before/after reads assume
    nothing else writes the same items meanwhile (measure at concurrency 1)."""

    def __init__(self) -> None:
        self.tally = Tally()
        self._lock = threading.Lock()

    def reset(self) -> Tally:
        with self._lock:
            tally, self.tally = self.tally, Tally()
        return tally

    def observe(
        self,
        operation: str,
        params: Mapping[str, Any],
        send: Callable[[], tuple[bool, Mapping[str, Any]]],
        read: ReadItem,
    ) -> None:
        """Run `send` (the call itself: (succeeded, response)) between reads of every item it writes."""
        targets = writes(operation, params)
        before = [read(w.table, w.key) for w in targets]
        ok, response = send()
        after = [read(w.table, w.key) for w in targets] if ok else []
        with self._lock:
            self.tally.calls[operation] += 1
            if not ok:
                return
            self.tally.read_units += read_units(operation, params, response)
            self.tally.written.extend(
                write_cost(w, b, a) for w, b, a in zip(targets, before, after, strict=True)
            )


def summary(tally: Tally, requests: int) -> Iterator[str]:
    """Per request: which items were written, their sizes and units (the report's account)."""
    rows: dict[tuple[str, str], list[Written]] = {}
    for w in tally.written:
        rows.setdefault((w.kind, w.action), []).append(w)
    for (what, action), ws in sorted(rows.items()):
        table = sum(w.table_units for w in ws) / requests
        index = sum(w.index_units for w in ws) / requests
        size = max(max(w.before, w.after) for w in ws)
        yield (
            f"{what:<22} {action:<14} x{len(ws) / requests:.2f}  up to {size:>5} B"
            f"  {table:.2f} WU" + (f" + {index:.2f} index WU" if index else "")
        )


# ---- prices (us-east-1 list prices, USD; on-demand DynamoDB since its November 2024 cut; Lambda arm64
# first tier; API Gateway REST first 333 million; S3 Standard requests)


@dataclass(frozen=True)
class Prices:
    write_unit: float = 0.625e-6
    read_unit: float = 0.125e-6
    lambda_request: float = 0.20e-6
    lambda_gb_second: float = 0.0000133334  # arm64
    api_request: float = 3.50e-6  # REST API
    s3_put: float = 0.005e-3
    s3_get: float = 0.0004e-3

    def lines(self) -> list[str]:
        return [
            f"DynamoDB on-demand: ${self.write_unit * 1e6:.3f} per million write units,"
            f" ${self.read_unit * 1e6:.3f} per million read units",
            f"Lambda arm64: ${self.lambda_request * 1e6:.2f} per million requests,"
            f" ${self.lambda_gb_second:.10f} per GB-second",
            f"API Gateway REST: ${self.api_request * 1e6:.2f} per million requests",
            f"S3 Standard: ${self.s3_put * 1e6:.2f} per million PUTs,"
            f" ${self.s3_get * 1e6:.2f} per million GETs",
        ]


PRICES = Prices()


def lambda_second_cost(memory_mb: int, prices: Prices = PRICES) -> float:
    return memory_mb / 1024 * prices.lambda_gb_second


def cost_per_million(
    *,
    write_units: float,
    read_units: float,
    lambda_ms: float,
    memory_mb: int,
    s3_puts: float = 0.0,
    s3_gets: float = 0.0,
    prices: Prices = PRICES,
) -> dict[str, float]:
    """Dollars per million requests by part: Lambda bills whole milliseconds."""
    parts = {
        "dynamodb writes": write_units * prices.write_unit,
        "dynamodb reads": read_units * prices.read_unit,
        "lambda duration": math.ceil(lambda_ms) / 1000 * lambda_second_cost(memory_mb, prices),
        "lambda requests": prices.lambda_request,
        "api gateway": prices.api_request,
        "s3": s3_puts * prices.s3_put + s3_gets * prices.s3_get,
    }
    return {name: dollars * 1e6 for name, dollars in parts.items()}
