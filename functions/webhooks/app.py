"""The webhook delivery queue's consumer (SQS): one signed attempt per record; the imagegate layer does it."""

from imagegate.lambda_app import webhook_handler

handler = webhook_handler()
