"""HTTP: the FastAPI app and the Lambda entry points (Mangum, SQS, EventBridge, schedules).
Imports every wing below it; only `local` and the CLI sit above."""
