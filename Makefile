# The two commands of the README: `make run` and `make test`. Everything else supports them.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck docs unit e2e postgres bench bench-policy bench-executor bench-audit bench-llm bench-e2e bench-hotpath bench-hop bench-slow bench-soak clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) is needed (set PYTHON=...)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/charter up --demo

test: $(STAMP) postgres lint typecheck docs
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

e2e: $(STAMP)
	$(BIN)/pytest tests/e2e

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The docs site, built --strict: a broken link, a missing page or a reference generator that
# fails stops the build. NO_MKDOCS_2_WARNING quiets Material's notice about its successor.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

postgres:
	@scripts/postgres.sh

AGT := bench/.venv-agt

$(AGT)/.installed:
	$(PYTHON) -m venv $(AGT)
	$(AGT)/bin/pip install --quiet agent-governance-toolkit-core==5.0.0
	touch $@

bench: $(STAMP) $(AGT)/.installed
	$(BIN)/python bench/latency.py --broker tansu
	$(BIN)/python bench/latency.py --broker kafka
	$(BIN)/python bench/policy.py
	$(BIN)/python bench/executor.py
	$(BIN)/python -m bench.audit
	$(BIN)/python bench/llm.py
	$(BIN)/python -m bench.hotpath
	$(BIN)/python -m bench.hotpath --telemetry
	$(BIN)/python -m bench.hop
	$(BIN)/python -m bench.e2e --broker tansu
	$(BIN)/python -m bench.e2e --broker kafka
	$(BIN)/python -m bench.slow

bench-llm: $(STAMP)
	$(BIN)/python bench/llm.py

bench-hotpath: $(STAMP)
	$(BIN)/python -m bench.hotpath
	$(BIN)/python -m bench.hotpath --telemetry

bench-hop: $(STAMP)
	$(BIN)/python -m bench.hop

bench-e2e: $(STAMP)
	$(BIN)/python -m bench.e2e

bench-slow: $(STAMP)
	$(BIN)/python -m bench.slow

# An hour at 10 runs/s, then ten minutes at 50, on the broker `charter up` chooses
# (add --broker tansu to either for the embedded one).
bench-soak: $(STAMP)
	$(BIN)/python -m bench.soak --rate 10 --minutes 60
	$(BIN)/python -m bench.soak --rate 50 --minutes 10

bench-executor: $(STAMP)
	$(BIN)/python bench/executor.py

bench-audit: $(STAMP) postgres
	$(BIN)/python -m bench.audit --postgres postgresql://charter:charter@127.0.0.1:5432/postgres

bench-policy: $(STAMP) $(AGT)/.installed
	$(BIN)/python bench/policy.py

clean:
	rm -rf $(VENV) $(AGT) .charter .pytest_cache .mypy_cache .ruff_cache
