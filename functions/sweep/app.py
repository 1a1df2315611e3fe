"""Scheduled every minute: refund reservations that killed requests left open; the layer does the work."""

from imagegate.http.lambda_app import sweep_handler

handler = sweep_handler()
