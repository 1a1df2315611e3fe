"""The table helpers: BatchGetItem in chunks DynamoDB accepts, asking again for what it leaves unprocessed."""

from imagegate.table import BATCH_GET_MAX, batch_get, item_key


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
