"""Issue 22: the usage counters follow the table's stream (money/usage.py), read here as `make serve` reads it
(local/streams.py) on whichever DynamoDB the stack runs: a request's usage shows in its balance once the
stream is drained, counted once, with the OpenAI SDK as the client."""

import time

from imagegate.table import item_key

DALLE2_256 = 16_000


def usage_rows(http, user):
    answer = http.get(f"{user.stack.base_url}/v1/balance", headers={"Authorization": f"Bearer {user.key}"})
    assert answer.status_code == 200
    return [
        (r["model"], r["requests"], r["images"], r["charged_micros"]) for r in answer.json()["usage"]["data"]
    ]


def test_a_requests_usage_shows_once_after_the_stream_is_drained(stack, new_user, http):
    user = new_user(stack)
    user.client.images.generate(model="dall-e-2", prompt="a kite", size="256x256", response_format="b64_json")
    stack.drain()
    assert usage_rows(http, user) == [("dall-e-2", 1, 1, DALLE2_256)]
    stack.drain()  # a drain with nothing new counts nothing again
    assert usage_rows(http, user) == [("dall-e-2", 1, 1, DALLE2_256)]


def test_a_request_closed_on_its_own_partition_is_counted_by_the_stream(stack, new_user, http):
    """A REQUEST item as it is written once it moves off the account partition (it carries its account_id):
    only the stream counts it."""
    user = new_user(stack)
    table, db = stack.settings.table, stack.aws.dynamodb
    key = item_key(f"REQUESTS#{user.account_id}#5", "REQUEST#req_stream_1")
    account = stack.service.accounts.authenticate(f"Bearer {user.key}")
    db.put_item(
        TableName=table,
        Item={
            **key,
            "account_id": {"S": user.account_id},
            "key_id": {"S": account.key_id},
            "model": {"S": "gpt-image-1"},
            "state": {"S": "reserved"},
        },
    )
    db.update_item(
        TableName=table,
        Key=key,
        UpdateExpression="SET #s = :settled, images = :two, charged = :c, refunded = :r, settled_at = :now",
        ConditionExpression="#s = :reserved",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={
            ":settled": {"S": "settled"},
            ":reserved": {"S": "reserved"},
            ":two": {"N": "2"},
            ":c": {"N": "84000"},
            ":r": {"N": "1000"},
            ":now": {"N": str(int(time.time()))},
        },
    )
    assert usage_rows(http, user) == []  # not before the stream is read
    stack.drain()
    assert usage_rows(http, user) == [("gpt-image-1", 1, 2, 84_000)]
    stack.drain()
    assert usage_rows(http, user) == [("gpt-image-1", 1, 2, 84_000)]
