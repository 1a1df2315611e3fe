"""The jobs queue's consumer (SQS): runs each image job to its end; the imagegate layer does the work."""

from imagegate.http.lambda_app import worker_handler

handler = worker_handler()
