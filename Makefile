PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# uv installs the locked set in seconds; its own version is pinned in pyproject.toml's dev extras.
UV_VERSION := $(shell sed -n 's/.*"uv==\([0-9.]*\)".*/\1/p' pyproject.toml)
UV := $(BIN)/uv
LAYER_REQUIREMENTS := layers/imagegate/requirements.txt
# The DynamoDB emulator `make serve` runs, pinned and verified by scripts/dynoxide.py (linux x86_64; elsewhere,
# or offline, the script says so in one line and make serve keeps moto's DynamoDB).
DYNOXIDE := $(VENV)/bin/dynoxide
# Never fetch a Python of uv's own: the venv uses $(PYTHON), as the README says.
export UV_PYTHON_DOWNLOADS := never

.PHONY: install serve test lint unit bench lock layer clean deploy deploy-check

# The venv follows uv.lock exactly (nothing is installed by hand) and is rebuilt when the lock changes.
$(UV):
	@echo "==> creating $(VENV) with $$($(PYTHON) --version) and installing uv $(UV_VERSION)"
	$(PYTHON) -m venv --without-pip $(VENV)
	$(PYTHON) -m pip --python $(BIN)/python install --disable-pip-version-check --quiet "uv==$(UV_VERSION)"

$(STAMP): uv.lock pyproject.toml | $(UV)
	@echo "==> installing the locked runtime and dev dependencies (uv.lock) into $(VENV)"
	$(UV) sync --frozen --extra dev --python $(BIN)/python
	@touch $(STAMP)
	@echo "==> $(VENV) is ready"

# One attempt per pinned version, whatever its outcome (the binary, or a one-line reason beside it): a failed
# download is not retried at every make test; `rm .venv/.dynoxide-*` and `make install` try again.
DYNOXIDE_STAMP := $(VENV)/.dynoxide-$(shell sed -n 's/^VERSION = "\(.*\)"/\1/p' scripts/dynoxide.py)
$(DYNOXIDE_STAMP): scripts/dynoxide.py | $(UV)
	@$(BIN)/python scripts/dynoxide.py $(DYNOXIDE)
	@touch $@

install: $(STAMP) $(DYNOXIDE_STAMP)

serve: $(STAMP) $(DYNOXIDE_STAMP)
	@echo "==> starting the dev stack on 127.0.0.1:$${PORT:-8000} (the first start compiles bytecode: a few seconds more)"
	@$(BIN)/python -m imagegate.local.devserver

# The layer's requirements file is exported from the lock: the same pins in the venv, the layer and CI.
# The docs (docs/, mkdocs.yml) build with --strict into build/site: a broken link or anchor, or a page left
# out of the nav, fails lint.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/cfn-lint template.yaml
	@mkdir -p build && $(UV) export --frozen --no-emit-project --no-dev --format requirements-txt --quiet \
		--no-header -o build/requirements.check.txt && grep -v '^#' $(LAYER_REQUIREMENTS) \
		| diff -u - build/requirements.check.txt \
		|| (echo "$(LAYER_REQUIREMENTS) is out of step with uv.lock: run make lock" && exit 1)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The end-to-end tests run on the DynamoDB make serve picks: Dynoxide where it installs. The console's browser
# test needs Debian's chromium and its driver: scripts/browser.sh installs them where it can (apt, root).
test: lint $(DYNOXIDE_STAMP)
	@sh scripts/browser.sh
	$(BIN)/python -m pytest -n 2 -q

# Refresh every pin (runtime and dev) to the newest releases the pyproject ranges allow, then re-export the
# layer's requirements. Commit uv.lock and the requirements file together.
lock: | $(UV)
	$(UV) lock --upgrade --python $(PYTHON)
	$(UV) export --frozen --no-emit-project --no-dev --format requirements-txt --quiet \
		-o $(LAYER_REQUIREMENTS)

# The Lambda layer as `sam build` makes it (arm64, the template's Python), into build/layer.
layer: | $(UV)
	$(MAKE) -C layers/imagegate build-ImagegateLayer ARTIFACTS_DIR=$(CURDIR)/build/layer UV=$(CURDIR)/$(UV)

# A deploy whose every change reaches the live alias, parameter changes included (docs/upgrading.md):
#   make deploy [PARAMS="DemoMode=true LogLevel=DEBUG"] [SAM_FLAGS=--no-confirm-changeset]
# sam build, then sam deploy with every parameter's value and their DeployFingerprint, then deploy-check.
# deploy-check says whether each function's live alias runs what the stack declares (1 if not).
SAM ?= sam
export SAM
deploy: $(STAMP)
	$(SAM) build
	$(BIN)/python scripts/deploy.py deploy $(PARAMS) -- $(SAM_FLAGS)

deploy-check: $(STAMP)
	$(BIN)/python scripts/deploy.py check

# Issues 12 and 22's benchmarks (bench/run.py): every target with its measured ratio and verdict. A report, not
# a gate: not part of test or CI. About 8 minutes on 2 cores; the first run also installs a pinned LiteLLM
# into build/bench-litellm/ from PyPI (bench/http_compare.py).
bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
