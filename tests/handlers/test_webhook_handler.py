"""The webhook delivery function (functions/webhooks) with events/webhook_delivery.json on moto's DynamoDB
and SQS: a due attempt refused by the production URL check keeps the record in the queue, hidden until the
next attempt, and a message for a delivery that is over is dropped."""

import json

from imagegate.aws import AWSClients
from imagegate.config import Settings
from imagegate.jobs.webhooks import DELAYS_S, Webhooks
from imagegate.table import job_key

from .conftest import FakeLambdaContext


def test_a_refused_attempt_keeps_the_record_hidden_until_the_next_one_and_a_finished_one_is_dropped(stack):
    aws = AWSClients(Settings.from_env())
    queue = aws.sqs.create_queue(QueueName="deliveries")["QueueUrl"]
    event = stack.event("webhook_delivery")
    body = json.loads(event["Records"][0]["body"])
    body["account_id"] = stack.account_id
    aws.dynamodb.put_item(
        TableName=stack.table,
        Item={**job_key(stack.account_id, body["job_id"]), "status": {"S": "succeeded"}},
    )
    # An endpoint whose name was public when set, and now resolves to loopback.
    aws.dynamodb.put_item(
        TableName=stack.table,
        Item={
            "pk": {"S": f"ACCOUNT#{stack.account_id}"},
            "sk": {"S": "WEBHOOK"},
            "url": {"S": "https://127.0.0.1/hook"},
            "secret": {"S": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
            "created_at": {"N": "1763700000"},
        },
    )
    Webhooks(aws, stack.table, queue_url=queue).job_finished({**body["data"], "account_id": stack.account_id})
    (received,) = aws.sqs.receive_message(QueueUrl=queue, VisibilityTimeout=0)["Messages"]
    record = event["Records"][0]
    record.update(body=received["Body"], receiptHandle=received["ReceiptHandle"])

    handler = stack.handler("webhooks", IMAGEGATE_WEBHOOK_QUEUE_URL=queue)
    result = handler(event, FakeLambdaContext())

    assert result == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    webhook = aws.dynamodb.get_item(TableName=stack.table, Key=job_key(stack.account_id, body["job_id"]))
    state = webhook["Item"]["webhook"]["M"]
    assert (state["state"]["S"], state["attempts"]["N"], state["last_error"]["S"]) == (
        "pending",
        "1",
        "address_forbidden",
    )
    assert int(state["next_attempt_at"]["N"]) - int(state["last_attempt_at"]["N"]) == DELAYS_S[0]
    assert aws.sqs.receive_message(QueueUrl=queue).get("Messages", []) == []  # hidden until then

    # The same record again before it is due: no attempt, kept.
    assert handler(event, FakeLambdaContext())["batchItemFailures"] != []
    aws.dynamodb.update_item(
        TableName=stack.table,
        Key=job_key(stack.account_id, body["job_id"]),
        UpdateExpression="SET webhook.#s = :done",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":done": {"S": "delivered"}},
    )
    assert handler(event, FakeLambdaContext()) == {"batchItemFailures": []}
