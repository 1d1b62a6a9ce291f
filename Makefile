# The verbs a newcomer needs. `make run` and `make test` are the two Quick-start commands.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APPRAISER := $(BIN)/appraiser
STAMP := $(VENV)/.installed

.PHONY: help install requirements run serve train lint typecheck pytest notebooks notebooks-refresh test benchmark mlflow-ui clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install the pinned, hash-checked dependencies

$(STAMP): requirements-bootstrap.txt requirements.txt infra/requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# The installers first, pinned and hash-checked: the pip that `python3 -m venv` brings differs
	@# by machine (23.x refuses a pinned package's extras in hash-checking mode); uv installs the
	@# rest, every wheel hash-checked, in a tenth of pip's time (with the system's certificates, as
	@# pip uses them). infra/: the Pulumi program and its offline tests, never in the image.
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-bootstrap.txt
	$(BIN)/uv pip install --quiet --system-certs --python $(BIN)/python --require-hashes \
		-r requirements.txt -r infra/requirements.txt
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	touch $(STAMP)

PORT ?= 8000

run: install  ## train on the default data if there is no champion yet, then serve the API and page on PORT (8000)
	$(APPRAISER) train --if-no-champion
	$(APPRAISER) models
	$(APPRAISER) serve --port $(PORT)

serve: install  ## serve the API (/docs) and the web page (/) on PORT (8000) with the current champion
	$(APPRAISER) serve --port $(PORT)

train: install  ## train on DATA (default: the public table), e.g. make train DATA=../shared/data/diamonds.csv
	$(APPRAISER) train $(if $(DATA),--data $(DATA))

lint: install  ## ruff
	$(BIN)/ruff check src tests benchmarks infra
	$(BIN)/ruff format --check src tests benchmarks infra

typecheck: install  ## mypy
	$(BIN)/mypy

# One pytest-xdist session, a worker per core, runs the tests and the notebooks (nbmake); a worker
# takes the next test when it is free, the slow ones first (tests/conftest.py: SLOW_FIRST).
pytest: install  ## the test suite and the notebooks, in parallel
	$(BIN)/pytest -n auto --dist worksteal tests --nbmake notebooks --durations=15

notebooks: install  ## execute the notebooks (they must run clean)
	$(BIN)/pytest --nbmake notebooks -p no:cacheprovider

notebooks-refresh: install  ## re-execute the notebooks in place, so their committed outputs are current
	cd notebooks && ../$(BIN)/jupyter execute --inplace 01-eda.ipynb 02-modeling.ipynb

test: lint typecheck pytest  ## everything CI runs (pytest runs the notebooks too)

benchmark: install  ## print accuracy, timing and throughput figures
	$(BIN)/python benchmarks/accuracy.py
	$(BIN)/python benchmarks/predict_throughput.py
	$(BIN)/python benchmarks/serving.py

mlflow-ui: install  ## browse runs and models at http://127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath .appraiser)/mlflow.db --port 5000

requirements:  ## re-pin the installer (requirements-bootstrap.txt), requirements.txt (dev), requirements-runtime.txt and requirements-mlflow.txt (the images) and infra/requirements.txt (Pulumi)
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 --constraint infra/constraints.txt -o requirements.txt
	printf 'pip>=24\nuv\n' | $(BIN)/uv pip compile - --generate-hashes --python-version 3.11 --constraint requirements.txt -o requirements-bootstrap.txt
	echo 'setuptools>=77' | $(BIN)/uv pip compile pyproject.toml - --generate-hashes --python-version 3.11 --constraint requirements.txt -o requirements-runtime.txt
	echo 'setuptools>=77' | $(BIN)/uv pip compile pyproject.toml - --extra server --generate-hashes --python-version 3.11 --constraint requirements.txt -o requirements-mlflow.txt
	$(BIN)/uv pip compile infra/requirements.in --generate-hashes --python-version 3.11 --constraint requirements.txt -o infra/requirements.txt

clean:  ## remove the virtualenv and local state
	rm -rf $(VENV) .appraiser .mypy_cache .ruff_cache .pytest_cache
