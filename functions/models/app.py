"""GET /v1/models and /v1/models/{model}: the whole Lambda function; the imagegate layer does the work."""

from imagegate.http.lambda_app import lambda_handler

handler = lambda_handler("models")
