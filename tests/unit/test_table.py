"""The table helpers: BatchGetItem in chunks DynamoDB accepts, asking again for what it leaves unprocessed."""

from imagegate.table import (
    BATCH_GET_MAX,
    JOB_SHARDS,
    batch_get,
    item_key,
    job_ids,
    job_key,
    job_partitions,
    job_shard,
    legacy_job_key,
)


class Throttling:
    """BatchGetItem as DynamoDB answers it: at most BATCH_GET_MAX keys, and the first call of every chunk
    returns only half its keys, the rest as UnprocessedKeys."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def batch_get_item(self, RequestItems):
        [(table, request)] = RequestItems.items()
        keys = request["Keys"]
        assert len(keys) <= BATCH_GET_MAX, "ValidationException: Too many items requested"
        self.calls.append(len(keys))
        done, rest = (keys[: len(keys) // 2], keys[len(keys) // 2 :]) if len(keys) > 1 else (keys, [])
        unprocessed = {table: {**request, "Keys": rest}} if rest else {}
        return {"Responses": {table: [dict(k, n={"N": "1"}) for k in done]}, "UnprocessedKeys": unprocessed}


def test_batch_get_chunks_by_100_and_asks_again_for_unprocessed_keys():
    db, sleeps = Throttling(), []
    keys = [item_key("P", f"{i:03d}") for i in range(150)]
    items = list(batch_get(db, "t", keys, sleeps.append))
    assert sorted(i["sk"]["S"] for i in items) == [f"{i:03d}" for i in range(150)]
    assert db.calls[0] == 100 and max(db.calls) <= 100
    assert sleeps  # backed off before asking again


def test_a_job_key_holds_its_account_and_a_shard_of_its_id():
    job_id = "imgjob_018bcfe56800f00891f28484934333fc"
    key = job_key("acct_a", job_id)
    assert key["pk"]["S"] == f"JOBS#acct_a#{job_shard(job_id)}" and key["sk"]["S"] == f"JOB#{job_id}"
    assert job_key("acct_a", job_id) == key  # the same shard in every process (no salted hash)
    assert 0 <= job_shard(job_id) < JOB_SHARDS
    assert {job_shard(f"imgjob_{n:032x}") for n in range(64)} == set(range(JOB_SHARDS))
    # No other account's key, on a shard or on the account partition, is ever this one.
    for other in ("acct_b", "acct_a#1", "acct_", "acct_a#"):
        assert key["pk"]["S"] not in job_partitions(other)
        assert job_key(other, job_id) != key and legacy_job_key(other, job_id) != key
    assert legacy_job_key("acct_a", job_id)["pk"]["S"] == "ACCOUNT#acct_a"


def test_a_job_items_ids_read_back_from_either_partition():
    job_id = "imgjob_018bcfe56800f00891f28484934333fc"
    for account_id in ("acct_a", "acct_a#1"):
        assert job_ids(job_key(account_id, job_id)) == (account_id, job_id)
        assert job_ids(legacy_job_key(account_id, job_id)) == (account_id, job_id)
