"""Local: the dev server (`make serve`) and its AWS emulator. Never loaded by a Lambda function: only the
CLI and the dev server import it."""
