# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# pytest-xdist workers for `make test` (tests/conftest.py shares the torch threads between
# them; --dist loadfile keeps a file's module fixtures, e.g. a torchao run, on one worker).
# 2 fits CI's 2 cores and 24 GiB; TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2

.PHONY: demo test lint test-fast fuzz install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Every install uses constraints.txt, the single home of our pins.
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install -q -c constraints.txt -e ".[executorch,onnx,openvino,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m tutorials.demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# The pipeline fuzzer's long profile (tests/fuzz): random models through every backend,
# PT2E_FUZZ_EXAMPLES per lowering test (default 30: about an hour on 2 loaded cores).
fuzz: $(STAMP)
	PT2E_FUZZ_PROFILE=long PT2E_FUZZ_LOG=$${PT2E_FUZZ_LOG:-fuzz.log} $(PY) -m pytest -q tests/fuzz --hypothesis-show-statistics

clean:
	rm -rf $(VENV) build *.egg-info
