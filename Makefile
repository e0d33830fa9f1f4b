# Two commands set up a fresh machine:  `make run` (open the app)  and  `make test`.
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
PORT    ?= 8501
STAMP    = $(VENV)/.installed

.PHONY: install run test bundle bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

APP_STAMP = $(VENV)/.installed-app

# constraints.txt pins the CPU build of torch (see README).
# The app needs the package alone; the tests also need pytest, Playwright, pynwb and Ray.
$(APP_STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $(APP_STAMP)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP) $(APP_STAMP)

install: $(STAMP)

run: $(APP_STAMP)
	$(BIN)/streamlit run app.py --server.port $(PORT)

test: install
	scripts/install-chromium.sh
	MPLCONFIGDIR=$$(mktemp -d) $(BIN)/python -m pytest -q

# Rebuild the bundled default run shipped in assets/.
bundle: $(APP_STAMP)
	$(BIN)/compactvision pipeline --preset demo --out assets/default_run --force

bench: install
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
