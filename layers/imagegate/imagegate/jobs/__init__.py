"""Jobs: asynchronous image work, the AWS triggers that start it, signed webhooks and EventBridge events.
Imports `service` and every wing below it."""
