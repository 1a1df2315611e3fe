"""imagegate: an OpenAI-compatible image API for AWS Lambda."""
