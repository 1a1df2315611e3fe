"""imagegate: an OpenAI-compatible image API for AWS Lambda.

On the ground floor, what every wing uses: `config`, `errors`, `table`, `aws`, `storage`, `metrics`, `units`.
Above it, wings by domain, each importing only its own floor and those below (tests/unit/test_layering.py):
`catalog` < `inputs` < `providers` < `money` < `service`/`streaming` (one request) < `jobs` < `http` <
`local` < `cli`.
"""
