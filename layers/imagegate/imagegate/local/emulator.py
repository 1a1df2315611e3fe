"""The AWS emulation `make serve` runs: moto's server for S3, SQS and EventBridge, fit for hours of load.

DynamoDB is Dynoxide's where `make install` put it (devserver.py says why); this server serves it too, as
moto does, for the stacks that fall back to it and for tests that check this server's own isolation.

moto alone degrades with use in two ways, both fixed here, in the emulator's own process only:

- TransactWriteItems deep-copies every table it names, once per action, to be able to roll back. Its cost
  grows with the table: after ~640 requests a transaction took ~100 ms and the process reached GBs.
  `install_transaction_snapshots` keeps moto's transaction (its validation, its conditions, its cancellation
  reasons) and gives it a snapshot of only the items the transaction names: a copy of each before it runs,
  put back if it fails in any way (and the stream records it appended removed). A transaction is still all
  or nothing.
- S3 keeps every object in memory, and every request writes its images under `outputs/`. `OutputLifecycle`
  deletes them as the bucket's lifecycle rule does, sooner: once they are older than the presigned URLs
  that point to them (an hour), or, oldest first, once they hold more than a cap of memory.

Requests are served one at a time (`serve`): moto applies a transaction in several steps, so two served at
once could interleave and overdraw a balance that real DynamoDB, which isolates each request, protects. One at
a time, every transaction is atomic with respect to every other request, as DynamoDB's are.
"""

from __future__ import annotations

import collections
import copy
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

OUTPUT_PREFIX = "outputs/"
OUTPUT_MAX_AGE_S = 3600  # the presigned URLs' lifetime (storage.Storage.url_ttl_seconds)
OUTPUT_MAX_BYTES = 64 * 1024 * 1024


def install_transaction_snapshots() -> None:
    """Make moto's TransactWriteItems snapshot the items it names instead of whole tables (idempotent).

    moto copies a table for rollback only when its name is `in` the backend's tables; the transaction runs
    against a view of them that answers no, and this wrapper restores the items it copied instead (and cuts
    the tables' streams back). An action whose key cannot be read falls back to moto's own whole-table copy.
    """
    from moto.dynamodb.models import DynamoDBBackend

    if getattr(DynamoDBBackend.transact_write_items, "snapshots_items", False):
        return
    whole_tables = DynamoDBBackend.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        saved = _snapshot(self.tables, transact_items)
        if saved is None:
            return whole_tables(self, transact_items)
        tables = self.tables
        self.tables = _NoWholeTableCopies(tables)
        try:
            whole_tables(self, transact_items)
        except BaseException:
            _restore(saved)
            raise
        finally:
            self.tables = tables

    transact_write_items.snapshots_items = True  # type: ignore[attr-defined]
    DynamoDBBackend.transact_write_items = transact_write_items


def install_expression_caches() -> None:
    """Make moto lex each distinct condition expression once (idempotent).

    moto lexes a ConditionExpression character by character with regular expressions at every call: a
    tenth of its time per transaction. The tokens depend on the expression's text alone (names and values
    are resolved in later stages, from the request), and imagegate sends a handful of distinct texts whose
    values change, so the tokens are kept per text (bounded: any client may send any text).
    """
    from moto.dynamodb.comparisons import ConditionExpressionParser

    lex = ConditionExpressionParser._lex_condition_expression
    if getattr(lex, "cached", False):
        return

    @functools.lru_cache(maxsize=512)
    def tokens(expression: str) -> tuple[Any, ...]:
        return tuple(lex(ConditionExpressionParser(expression, None, None)))

    def cached_lex(self: Any) -> collections.deque:
        # A fresh deque per parse (the parser consumes it); the tokens are immutable tuples, shared.
        return collections.deque(tokens(self.condition_expression))

    cached_lex.cached = True  # type: ignore[attr-defined]
    ConditionExpressionParser._lex_condition_expression = cached_lex


class _NoWholeTableCopies(dict):
    """The backend's tables as moto's transaction sees them: found by lookup, never `in` (its copy test)."""

    def __contains__(self, name: object) -> bool:
        return False


# (table, hash key, range key or None, whether the hash key's partition existed, the item's copy or None)
Saved = tuple[Any, Any, Any, bool, Any]


def _snapshot(
    tables: dict[str, Any], transact_items: list[dict[str, Any]]
) -> tuple[list[Saved], dict[Any, int]] | None:
    """A copy of each item the transaction names, as it is now (None: absent), and the length of each of
    their tables' streams; None if one cannot be read."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    saved: list[Saved] = []
    streams: dict[Any, int] = {}  # a table's stream shard -> how many records it held
    for action in transact_items:
        for kind, op in action.items():
            if not isinstance(op, dict):
                return None
            table = _table(tables, op.get("TableName"))
            if table is None:
                continue  # moto refuses it, having changed nothing in that table
            if table.stream_shard is not None and table.stream_shard not in streams:
                # The records a failed transaction appended go too; no one reads them meanwhile.
                streams[table.stream_shard] = len(table.stream_shard.items)
            source = op.get("Item") if kind == "Put" else op.get("Key")
            names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
            if not isinstance(source, dict) or any(name not in source for name in names):
                return None
            try:
                hash_key = DynamoType(source[table.hash_key_attr])
                range_key = DynamoType(source[table.range_key_attr]) if table.range_key_attr else None
            except Exception:
                return None
            existed = hash_key in table.items
            if range_key is None:
                current = table.items.get(hash_key)
            else:
                current = table.items[hash_key].get(range_key) if existed else None
            saved.append((table, hash_key, range_key, existed, copy.deepcopy(current)))
    return saved, streams


def _table(tables: dict[str, Any], name: Any) -> Any:
    """The table a transaction names, by name or by ARN as moto finds it; None if there is none."""
    if not isinstance(name, str):
        return None
    table = tables.get(name)
    if table is None:
        table = next((t for t in tables.values() if t.table_arn == name), None)
    return table


def _restore(snapshot: tuple[list[Saved], dict[Any, int]]) -> None:
    saved, streams = snapshot
    for shard, length in streams.items():
        del shard.items[length:]
    # Newest first, so that an item named twice (which moto refuses) ends as it was before the first.
    for table, hash_key, range_key, existed, item in reversed(saved):
        if range_key is None:
            if item is None:
                table.items.pop(hash_key, None)
            else:
                table.items[hash_key] = item
            continue
        partition = table.items[hash_key]
        if item is None:
            partition.pop(range_key, None)
        else:
            partition[range_key] = item
        if not partition and not existed:
            del table.items[hash_key]


class OutputLifecycle:
    """Deletes objects under `outputs/` older than `max_age_s`, and the oldest while they hold more than
    `max_bytes`: checked at every write, so what is kept stays bounded without a sweep over the bucket."""

    def __init__(
        self,
        max_age_s: float = OUTPUT_MAX_AGE_S,
        max_bytes: int = OUTPUT_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.clock = clock
        self.kept = 0  # bytes
        self.deleted = 0  # objects
        # (account, bucket, key) -> (size, written at), oldest first
        self._outputs: collections.OrderedDict[tuple[str, str, str], tuple[int, float]] = (
            collections.OrderedDict()
        )

    def install(self) -> None:
        """Watch moto's S3 writes (in this process; call once)."""
        from moto.s3.models import S3Backend

        put_object = S3Backend.put_object
        lifecycle = self

        def watched_put_object(backend: Any, bucket_name: str, key_name: str, *args: Any, **kw: Any) -> Any:
            key = put_object(backend, bucket_name, key_name, *args, **kw)
            if key_name.startswith(OUTPUT_PREFIX):
                lifecycle.written(backend, bucket_name, key_name, int(getattr(key, "size", 0) or 0))
            return key

        S3Backend.put_object = watched_put_object

    def written(self, backend: Any, bucket: str, key: str, size: int) -> None:
        entry = (backend.account_id, bucket, key)
        old = self._outputs.pop(entry, None)
        if old is not None:
            self.kept -= old[0]
        now = self.clock()
        self._outputs[entry] = (size, now)
        self.kept += size
        while self._outputs:
            (account, bucket_name, key_name), (size, at) = next(iter(self._outputs.items()))
            if now - at <= self.max_age_s and self.kept <= self.max_bytes:
                break
            del self._outputs[(account, bucket_name, key_name)]
            self.kept -= size
            self._delete(backend, bucket_name, key_name)

    def _delete(self, backend: Any, bucket: str, key: str) -> None:
        try:
            fake_key = backend.get_bucket(bucket).keys.get(key)
            backend.delete_object(bucket, key)
        except Exception:
            return  # the bucket or the object is gone already
        self.deleted += 1
        if fake_key is not None and hasattr(fake_key, "dispose"):
            fake_key.dispose()


def serve(port: int, *, lifecycle: OutputLifecycle | None = None) -> BaseWSGIServer:
    """Serve moto's S3 and DynamoDB on 127.0.0.1:`port` (0: any free one) from a daemon thread, one request
    at a time, with item snapshots for transactions and the output lifecycle (this process only)."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class Dispatcher(DomainDispatcherApplication):
        """moto's dispatcher, remembering which backend serves a host name: it matched the name against
        every service's URL patterns at every request (a tenth of its time). The patterns never change."""

        known: dict[str | None, Any]

        def get_backend_for_host(self, host: str | None) -> Any:
            if host not in self.known:
                self.known[host] = super().get_backend_for_host(host)
            return self.known[host]

    install_transaction_snapshots()
    install_expression_caches()
    (lifecycle or OutputLifecycle()).install()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request otherwise
    app = Dispatcher(create_backend_app)
    app.known = {}
    lock = threading.Lock()

    def one_at_a_time(environ: dict, start_response: Any) -> list[bytes]:
        with lock:
            return list(app(environ, start_response))

    server = make_server("127.0.0.1", port, one_at_a_time, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
