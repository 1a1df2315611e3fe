"""GET /v1/images/jobs[/{id}], POST /v1/images/jobs/{id}/cancel; the imagegate layer does the work."""

from imagegate.http.lambda_app import lambda_handler

handler = lambda_handler("jobs")
