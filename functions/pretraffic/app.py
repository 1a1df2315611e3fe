"""CodeDeploy's pre-traffic hook: a free request through each new version; the layer does the work."""

from imagegate.http.lambda_app import pretraffic_handler

handler = pretraffic_handler()
