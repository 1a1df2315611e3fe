"""POST /v1/billing/stripe/webhook: Stripe's signed events credit top-ups; the imagegate layer does it."""

from imagegate.http.lambda_app import lambda_handler

handler = lambda_handler("stripe_webhook")
