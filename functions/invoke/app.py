"""Direct invocation and Step Functions: a job request in, the finished job out; the layer does the work."""

from imagegate.http.lambda_app import invoke_job_handler

handler = invoke_job_handler()
