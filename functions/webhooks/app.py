"""The webhook delivery queue's consumer (SQS): one signed attempt per record; the imagegate layer does it."""

from imagegate.http.lambda_app import webhook_handler

handler = webhook_handler()
