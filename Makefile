# Landmark recognition pipeline. Two commands on a fresh machine:
#   make all    prep -> folds -> train -> ensemble on the generated offline default
#   make test   the test suite
# Other data sets: make all DATASET=gld GLD_ROOT=/data/gldv2 | DATASET=cifar10 CIFAR_ROOT=... | DATASET=paris6k
# Choose models/folds: make train MODELS="resnet50 resneat50" FOLDS="0 1 2 3 4" EPOCHS=25
# Any other key: PREP_ARGS="top_k=100" for prep, ARGS="img_size=96" for train

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

DATASET ?= default
CONFIG  ?= configs/$(DATASET).yaml
comma := ,
empty :=
space := $(empty) $(empty)
ROOT_ARG  = $(if $(GLD_ROOT),source_root=$(GLD_ROOT)) $(if $(CIFAR_ROOT),source_root=$(CIFAR_ROOT)) $(if $(SOURCE_ROOT),source_root=$(SOURCE_ROOT))
TRAIN_ARGS = $(if $(MODELS),models=$(subst $(space),$(comma),$(strip $(MODELS)))) \
             $(if $(FOLDS),folds=$(subst $(space),$(comma),$(strip $(FOLDS)))) \
             $(if $(EPOCHS),epochs=$(EPOCHS)) $(if $(EXPERIMENT),experiment=$(EXPERIMENT))
ENS_ARGS   = $(if $(EXPERIMENT),experiment=$(EXPERIMENT)) $(if $(NAME),name=$(NAME))
export NO_ALBUMENTATIONS_UPDATE := 1
export HF_HUB_OFFLINE ?= 1

.PHONY: all setup prep folds train ensemble test test-fast lint bench models clean distclean

all: prep folds train ensemble

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

prep: $(STAMP)
	$(PY) -m data_prep prep --config $(CONFIG) $(strip $(ROOT_ARG)) $(PREP_ARGS)

folds: $(STAMP)
	$(PY) -m data_prep folds --config $(CONFIG)

train: folds
	$(PY) -m pipeline train --config $(CONFIG) $(strip $(TRAIN_ARGS)) $(ARGS)

ensemble: $(STAMP)
	$(PY) -m pipeline ensemble --config $(CONFIG) $(strip $(ENS_ARGS))

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/run_all.py

models: $(STAMP)
	$(PY) -m pipeline.models list --img-size 224

clean:
	rm -rf runs submissions/*.csv folds/*.csv

distclean: clean
	rm -rf data $(VENV)
