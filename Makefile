# Landmark recognition pipeline. Two commands on a fresh machine:
#   make all    prep -> folds -> train -> ensemble on the generated offline default
#   make test   the test suite
# `make help` lists every target and variable.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# every variable a user may set; a command-line one close to these is a typo and stops make
KNOWN_VARS := PYTHON CONSTRAINTS DATASET CONFIG RECIPE EXPERIMENT EXPERIMENTS NAME MODELS FOLDS EPOCHS ARGS \
              PREP_ARGS GLD_ROOT CIFAR_ROOT TEST_ROOT SOURCE_ROOT CONFIRM NPROC LAUNCH_ARGS
CLI_VARS := $(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),$(v)))
ifneq ($(filter-out $(KNOWN_VARS),$(CLI_VARS)),)
  VAR_TYPOS := $(shell $(PYTHON) -c 'import difflib, sys; known = sys.argv[1].split(); \
    hits = [(v, difflib.get_close_matches(v.upper(), known, 1, 0.75)) for v in sys.argv[2:]]; \
    print(", ".join(f"{v} (did you mean {m[0]}?)" for v, m in hits if m))' \
    "$(KNOWN_VARS)" $(filter-out $(KNOWN_VARS),$(CLI_VARS)))
  ifneq ($(VAR_TYPOS),)
    $(error unknown make variable $(VAR_TYPOS); nothing was run (make help lists the variables))
  endif
endif

DATASET ?= default
# several processes (GPUs; one machine, or each machine of several with LAUNCH_ARGS) for the
# stages that run a network: accelerate launch; unset or 1 = this process only
NPROC ?=
LAUNCH = $(if $(filter-out 1,$(NPROC)),$(VENV)/bin/accelerate launch --multi_gpu --num_processes $(NPROC) $(LAUNCH_ARGS) -m,$(PY) -m)
DATASETS := $(sort $(basename $(notdir $(wildcard configs/*.yaml))))
RECIPE_NAMES := $(sort $(basename $(notdir $(wildcard configs/recipes/*.yaml))))
CONFIG  ?= configs/$(DATASET).yaml
RECIPE  ?=
# a data set whose config reads photos from a folder (paris6k): that folder, to check it exists
CONFIG_SOURCE = $(firstword $(shell sed -n 's/^ *source_root: *\([^ #]*\).*/\1/p' $(CONFIG) 2>/dev/null))
# what `make all` says to type next, with the variables this run was given
NEXT_VARS = $(if $(filter-out default,$(DATASET)), DATASET=$(DATASET))$(if $(RECIPE), RECIPE=$(RECIPE))$(strip \
            )$(if $(filter command line,$(origin EXPERIMENT)), EXPERIMENT=$(EXPERIMENT))$(if $(NAME), NAME=$(NAME))$(if $(ARGS), ARGS='$(ARGS)')
# the file `make submit` will write, as the submit stage resolves it (name, {experiment}, submissions_dir);
# expanded only when `make all` prints its last line, when .venv exists
SUBMISSION = $(or $(shell $(PY) -c 'import sys; from common.cli import dashed_overrides; \
  from common.config import load_stage_config; from common.stages import stage_configs; \
  from pipeline.config_stages import EnsembleConfig; a = dashed_overrides(["submit", *sys.argv[1:]])[1:]; \
  cfg = [a[i + 1] for i, x in enumerate(a) if x == "--config"]; \
  over = [x for i, x in enumerate(a) if x != "--config" and (i == 0 or a[i - 1] != "--config")]; \
  c = load_stage_config(EnsembleConfig, "ensemble", cfg, over, stage_configs()); \
  print(f"{c.submissions_dir}/{c.name}.csv")' $(CONFIG_ARGS) $(STAGE_ARGS) 2>/dev/null),submissions/<name>.csv)
ifneq ($(RECIPE),)
  CONFIG_ARGS := --config $(CONFIG) --config configs/recipes/$(RECIPE).yaml
  EXPERIMENT ?= $(DATASET)_$(RECIPE)
else
  CONFIG_ARGS := --config $(CONFIG)
endif

comma := ,
empty :=
space := $(empty) $(empty)
list   = $(subst $(space),$(comma),$(strip $(1)))
ROOT_ARG  = $(if $(GLD_ROOT),source_root=$(GLD_ROOT)) $(if $(CIFAR_ROOT),source_root=$(CIFAR_ROOT)) \
            $(if $(SOURCE_ROOT),source_root=$(SOURCE_ROOT)) $(if $(TEST_ROOT),test_root=$(TEST_ROOT))
# keys every stage may take (each stage uses those it has, and ignores the others')
STAGE_ARGS = $(if $(EXPERIMENT),experiment=$(EXPERIMENT)) $(if $(MODELS),models=$(call list,$(MODELS))) \
             $(if $(FOLDS),folds=$(call list,$(FOLDS))) $(if $(EPOCHS),epochs=$(EPOCHS)) \
             $(if $(NAME),name=$(NAME)) $(ARGS)
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: all help setup settings prep verify folds train predict embed ensemble submit export compare \
        test test-fast lint bench models models-names clean clean-runs distclean check-dataset

all: prep folds train ensemble
	@echo "done: leaderboard and the internal-split CSV (a check of the pipeline, not a submission) in runs/"
	@echo "next: make predict submit$(NEXT_VARS) -> $(SUBMISSION), the file to upload"

help:
	@echo "Targets (each sets up .venv on first use):"
	@echo "  all          prep -> folds -> train -> ensemble on DATASET (default: the generated offline set)"
	@echo "  prep         read, select, split and cache DATASET (+ the competition test set: TEST_ROOT)"
	@echo "  verify       decode every cached image, re-encode damaged ones from the source (verify_report.json)"
	@echo "  folds        write the seeded fold file of DATASET"
	@echo "  train        train MODELS on FOLDS (makes the fold file when missing)"
	@echo "  predict      finished runs -> predictions on the test/competition/non-landmark manifests (TTA: ARGS)"
	@echo "  embed        finished runs -> L2-normalised embeddings for kNN retrieval"
	@echo "  ensemble     OOF/test predictions -> leaderboard + internal-split CSV (runs/EXPERIMENT/)"
	@echo "  submit       competition predictions -> submissions/NAME.csv, checked by the validator"
	@echo "  export       finished runs of EXPERIMENT -> an offline bundle for a Kaggle notebook (export/)"
	@echo "  compare      EXPERIMENTS side by side: model x experiment table and figure"
	@echo "  models       the model registry with params and MACs"
	@echo "  models-names the registered model names, instantly"
	@echo "  settings     print the resolved dataset, config, experiment, models, folds, epochs, recipe"
	@echo "  test         the whole test suite (what CI runs)"
	@echo "  test-fast    the suite without the tests marked slow"
	@echo "  bench        the benchmarks (numbers in BENCHMARKS.md)"
	@echo "  lint         ruff"
	@echo "  setup        create .venv and install the project (every target does it on first use)"
	@echo "  help         this list"
	@echo "  clean        caches only (__pycache__, .pytest_cache, bench/out); never data or runs"
	@echo "  clean-runs   delete runs/EXPERIMENT (or every experiment with CONFIRM=yes)"
	@echo "  distclean    clean + data/ + .venv (asks for CONFIRM=yes)"
	@echo "Variables:"
	@echo "  DATASET      one of: $(DATASETS)  (configs/DATASET.yaml)"
	@echo "  CONFIG       the experiment file (default configs/DATASET.yaml)"
	@echo "  RECIPE       layer configs/recipes/RECIPE.yaml on top (e.g. kaggle); EXPERIMENT defaults to DATASET_RECIPE"
	@echo "  EXPERIMENT   run folder name under runs/: applies to train, predict, ensemble, submit, export"
	@echo "  NAME         submissions/NAME.csv"
	@echo "  MODELS       \"resnet50 resneat50 timm:efficientnet_b0\";  FOLDS \"0 1 2 3 4\";  EPOCHS 25"
	@echo "  ARGS         any key=value of any stage (each stage takes its own), e.g. ARGS=\"lr=1e-3 tta_flip=true\""
	@echo "  PREP_ARGS    key=value for prep only, e.g. PREP_ARGS=\"top_k=100 packed=true\""
	@echo "  GLD_ROOT     GLD v1/v2 folder (DATASET=gld);  CIFAR_ROOT: folder with the CIFAR pickles"
	@echo "  TEST_ROOT    the competition's test folder (sample_submission.csv + test/a/b/c/<id>.jpg)"
	@echo "  SOURCE_ROOT  raw data folder for any other source (paris6k: one folder per landmark)"
	@echo "  NPROC        processes for train/predict/embed (GPUs): accelerate launch --multi_gpu --num_processes NPROC"
	@echo "  LAUNCH_ARGS  more accelerate launch options, e.g. several machines: --num_machines 2 --machine_rank 0 \\"
	@echo "               --main_process_ip HOST --main_process_port 29500 (run the same make on every machine)"
	@echo "  EXPERIMENTS  \"a b\" for compare;  CONFIRM=yes for clean-runs (all) and distclean"
	@echo "  PYTHON       the interpreter that creates .venv (python3);  CONSTRAINTS: pin file (constraints.txt)"
	@echo "A misspelt variable (EPOCH=1) stops make before anything runs; OMP_NUM_THREADS etc. pass through."

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' -c $(or $(CONSTRAINTS),constraints.txt)
	touch $(STAMP)

setup: $(STAMP)

check-dataset:
	@test -f "$(CONFIG)" || { echo "error: no config $(CONFIG) for DATASET=$(DATASET) (valid: $(DATASETS))" >&2; exit 2; }
	@test -z "$(RECIPE)" || test -f "configs/recipes/$(RECIPE).yaml" || { \
	  echo "error: no recipe configs/recipes/$(RECIPE).yaml for RECIPE=$(RECIPE) (valid: $(RECIPE_NAMES))" >&2; exit 2; }
	@if [ -n "$(CONFIG_SOURCE)" ] && [ ! -d "$(CONFIG_SOURCE)" ] && [ -z "$(SOURCE_ROOT)" ] \
	  && [ ! -f data/$(DATASET)/prep_report.json ]; then \
	  echo "error: DATASET=$(DATASET) reads its photos from $(CONFIG_SOURCE) ($(CONFIG)), not on this machine:" \
	  "point it at yours with SOURCE_ROOT=/path/to/photos (one folder per landmark: <landmark>/<photo>.jpg)" >&2; \
	  exit 2; fi
	@if [ "$(DATASET)" = gld ] && [ -z "$(GLD_ROOT)$(SOURCE_ROOT)" ] && [ ! -f data/gld/prep_report.json ]; then \
	  echo "error: DATASET=gld needs GLD_ROOT=/path/to/gldv2 (train.csv + train/a/b/c/<id>.jpg)" >&2; exit 2; fi
	@case "$(DATASET)" in cifar*) if [ -z "$(CIFAR_ROOT)$(SOURCE_ROOT)" ] && [ ! -f data/$(DATASET)/prep_report.json ]; then \
	  echo "error: DATASET=$(DATASET) needs CIFAR_ROOT=/path/containing/the CIFAR pickles" >&2; exit 2; fi;; esac

settings: $(STAMP) check-dataset
	@$(PY) -m pipeline settings $(CONFIG_ARGS) $(strip $(STAGE_ARGS))

prep: settings
	$(PY) -m data_prep prep $(CONFIG_ARGS) $(strip $(ROOT_ARG) $(STAGE_ARGS)) $(PREP_ARGS)

verify: settings
	$(PY) -m data_prep verify $(CONFIG_ARGS) $(strip $(ROOT_ARG) $(STAGE_ARGS)) $(PREP_ARGS)

folds: settings
	$(PY) -m data_prep folds $(CONFIG_ARGS) $(strip $(STAGE_ARGS))

train: settings
	$(LAUNCH) pipeline train $(CONFIG_ARGS) $(strip $(STAGE_ARGS))

predict: settings
	$(LAUNCH) pipeline predict $(CONFIG_ARGS) $(strip $(STAGE_ARGS))

embed: settings
	$(LAUNCH) pipeline embed $(CONFIG_ARGS) $(strip $(STAGE_ARGS))

ensemble: settings
	$(PY) -m pipeline ensemble $(CONFIG_ARGS) $(strip $(STAGE_ARGS))

submit: settings
	$(PY) -m pipeline submit $(CONFIG_ARGS) $(strip $(STAGE_ARGS))

export: settings
	$(PY) -m pipeline export $(CONFIG_ARGS) $(strip $(STAGE_ARGS))

compare: $(STAMP)
	@test -n "$(EXPERIMENTS)" || { echo 'error: make compare needs EXPERIMENTS="a b ..." (folders of runs/)' >&2; exit 2; }
	$(PY) -m pipeline compare $(EXPERIMENTS)

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

models-names: $(STAMP)
	@$(PY) -m pipeline.models list --names

clean:
	rm -rf .pytest_cache .ruff_cache bench/out
	find . -name __pycache__ -type d -not -path './.venv/*' -prune -exec rm -rf {} +

clean-runs:
	@if [ -n "$(EXPERIMENT)" ]; then echo "rm -rf runs/$(EXPERIMENT)"; rm -rf "runs/$(EXPERIMENT)"; \
	elif [ "$(CONFIRM)" = yes ]; then echo "rm -rf runs"; rm -rf runs; \
	else echo "error: say which: make clean-runs EXPERIMENT=name, or every experiment with CONFIRM=yes" >&2; exit 2; fi

distclean: clean
	@if [ "$(CONFIRM)" = yes ]; then rm -rf data $(VENV) runs folds/*.csv submissions/*.csv; \
	else echo "error: distclean deletes data/, runs/ and .venv: run it with CONFIRM=yes" >&2; exit 2; fi
