"""The table's stream: requests that closed, added to the usage counters in batches; the layer does it."""

from imagegate.http.lambda_app import usage_handler

handler = usage_handler()
