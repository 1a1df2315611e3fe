"""The requests queue: jobs AWS services ask for (SQS, EventBridge, S3 manifests); the layer does the work."""

from imagegate.http.lambda_app import job_requests_handler

handler = job_requests_handler()
