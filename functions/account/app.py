"""The key holder's own endpoints and the console: the routes' whole Lambda function; the layer does it."""

from imagegate.http.lambda_app import lambda_handler

handler = lambda_handler("account")
