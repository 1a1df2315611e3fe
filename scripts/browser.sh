#!/bin/sh
# Debian's chromium and chromium-driver for the console's browser test (tests/e2e/test_console.py), installed
# when they are missing, apt-get is there and we are root (as on the developers' machines and CI); elsewhere
# this says why in one line and the test skips with that reason. Idempotent: nothing to do once installed.
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "scripts/browser.sh: no apt-get here; install chromium and its driver to run the console's browser test"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "scripts/browser.sh: not root; run 'sudo apt-get install chromium chromium-driver' for the browser test"
    exit 0
fi
echo "==> installing Debian's chromium and chromium-driver for the console's browser test (about 20 s)"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
    echo "scripts/browser.sh: apt-get could not install chromium; the console's browser test will be skipped"
fi
exit 0
