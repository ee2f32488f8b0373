# bnlab: the README's two commands are `make demo` and `make test`.
# Every target installs what it needs into .venv on first use.
SHELL := /bin/bash
PY    ?= python3
VENV  ?= .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist
export WANDB_SILENT ?= true

# sweeps: make sweep EXP=<study> [SCALE=cpu|gpu] [LAUNCHER=basic|joblib|submitit_local|slurm] [JOBS=2] [THREADS=1]
#         [JOBS_PER_GPU=1] [RETRY_FAILED=1] [ARGS="hydra overrides"]
EXP          ?=
SCALE        ?= cpu
# CPU sweeps default to 2 runs at once x 1 thread each: 1.23x the aggregate images/s of 1 run x 2 threads on the
# idle 2-core machine (results/bench/sweep_cpu.csv, `make bench`). Other scales run one job per visible GPU at once
# (JOBS_PER_GPU each): every job claims its own GPU(s), a Sync BN job as many as its ranks (train/device_claims.py)
LAUNCHER     ?= joblib
comma        := ,
VISIBLE_GPUS  = $(if $(CUDA_VISIBLE_DEVICES),$(words $(subst $(comma), ,$(CUDA_VISIBLE_DEVICES))),$(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU'))
JOBS_PER_GPU ?= 1
JOBS         ?= $(if $(filter cpu,$(SCALE)),2,$(shell echo $$(( $(or $(filter-out 0,$(VISIBLE_GPUS)),1) * $(JOBS_PER_GPU) ))))
THREADS      ?= 1
RETRY_FAILED ?= 0
export BNLAB_JOBS_PER_GPU := $(JOBS_PER_GPU)
launcher_basic          :=
launcher_joblib         := hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS)
# one thread per CPU job; GPU jobs keep torch's default unless THREADS is given
threads_joblib          := $(if $(filter cpu,$(SCALE))$(filter command line,$(origin THREADS)),OMP_NUM_THREADS=$(THREADS) MKL_NUM_THREADS=$(THREADS))
launcher_submitit_local := hydra/launcher=submitit_local
launcher_slurm          := hydra/launcher=slurm
retry_1 := train.retry_failed=true

.PHONY: install lock data demo train test test-slow lint format bench bench-norm plan check-sweep-vars sweep-data sweep pilot collect figures report status sync need-exp clean help

help:  ## list targets and the variables they read
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'
	@echo
	@echo "variables (make <target> VAR=value):"
	@echo "  EXP=<study>       sweep/collect/figures/status/sync: a study of conf/experiment/ ($$(cd conf/experiment && ls *.yaml | sed 's/.yaml//' | tr '\n' ' '))"
	@echo "  SCALE=cpu|gpu     preset (conf/scale/ + conf/study_scale/<study>_<scale>.yaml); default cpu"
	@echo "  LAUNCHER=basic|joblib|submitit_local|slurm   how sweep runs its jobs: JOBS at once (joblib,"
	@echo "                    the default at every scale (here: $(LAUNCHER))), one after another (basic), or as submitit"
	@echo "                    jobs (local processes, SLURM)"
	@echo "  JOBS=n            joblib: jobs at once (SCALE=cpu: 2; SCALE=gpu: visible GPUs x JOBS_PER_GPU, each job on its own GPU)"
	@echo "  RETRY_FAILED=1    sweep: rerun runs recorded as failed/diverged (finished runs are always skipped)"
	@echo "  COMMIT=1          collect/figures: write the committed results/<study>/<scale>/ (default: runs/<study>/_collected/)"
	@echo "  ALL=1             collect: also runs outside the study's sweep grid, as separate variants"
	@echo "  WHERE=\"k=v ...\"   collect: only the runs whose config key k is v, e.g. WHERE=train.processes=1"
	@echo "  WANDB=1           figures: also log the figures and tables to W&B (one run in the study's group; offline unless WANDB_MODE=online)"
	@echo "  ARGS=\"...\"        extra Hydra overrides (train, sweep, demo) or pytest arguments (test), e.g."
	@echo "                    make train ARGS=\"norm=ghost norm.nbs=16\"   make sweep EXP=nbs ARGS=\"seed=0\""

# constraints.txt pins every dependency to the exact version the tests and committed results used
$(STAMP): pyproject.toml constraints.txt
	@test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' -c constraints.txt
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install bnlab with its dev tools, at the versions in constraints.txt

lock:  ## rewrite constraints.txt from the versions installed in .venv (after upgrading a package there)
	$(BIN)/python scripts/lock_constraints.py

data:  ## install the offline Fashion-MNIST (Debian package) when root and it is missing
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing dataset-fashion-mnist (offline default data)"; \
		apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }; \
	else \
		echo "note: $(FMNIST_DIR) is missing; run 'sudo apt-get install dataset-fashion-mnist' or set data.root=..."; \
	fi

# the main job at small scale: a reduced CPU sweep of the NBS study (3 NBS values, 1 seed, 3 epochs on a 10k slice) as its
# own study (nbs_demo, so it never mixes with a full sweep's runs), collected and analysed like the NBS study
# into runs/nbs_demo/_report/ (committed full-study results live in results/nbs/cpu/)
DEMO_SWEEP := study=nbs_demo norm.nbs=4,32,256 seed=0 train.epochs=3 data.train_subset=10000 data.val_subset=2048
DEMO_OUT   := runs/nbs_demo/_report
demo: install data  ## the main job on the embedded default: a small NBS sweep -> table + figure (offline, CPU)
	$(BIN)/python -m bnlab.train -m experiment=nbs scale=cpu $(DEMO_SWEEP) $(ARGS)
	$(BIN)/bnlab collect nbs_demo --preset cpu --out $(DEMO_OUT)
	$(BIN)/bnlab figures nbs --out $(DEMO_OUT)
	@echo; echo "demo done: figure $(DEMO_OUT)/nbs_error_vs_nbs.png, table $(DEMO_OUT)/nbs_table.md"

train: install data  ## one run; pass Hydra overrides with ARGS="..."
	$(BIN)/python -m bnlab.train $(ARGS)

test: install data  ## fast test suite (slow tests deselected)
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: install data  ## only the slow and end-to-end tests (the rest of the suite)
	$(BIN)/python -m pytest -q -m 'slow or e2e' $(ARGS)

lint: install  ## ruff check + format check
	$(BIN)/ruff check src tests scripts experiments examples
	$(BIN)/ruff format --check src tests scripts experiments examples

format: install
	$(BIN)/ruff check --fix src tests scripts experiments examples
	$(BIN)/ruff format src tests scripts experiments examples

bench-norm: install  ## time every norm variant against nn.BatchNorm2d -> results/bench/
	$(BIN)/python scripts/bench_norm.py $(ARGS)

bench: install data  ## every performance table (norms, training img/s, overheads, sweeps, studies, stacked runs, a preset's step with each speed setting + the plan's constants) -> results/bench/
	$(BIN)/python scripts/bench.py $(ARGS)

need-exp:
	@test -n "$(EXP)" || { echo "usage: make $(MAKECMDGOALS) EXP=<study>  (studies: $$(ls conf/experiment | sed 's/.yaml//' | tr '\n' ' '))"; exit 2; }

LAUNCHERS := basic joblib submitit_local slurm
check-sweep-vars:  # a misspelt LAUNCHER or RETRY_FAILED would otherwise run a different sweep without a word
	@test -n "$(filter $(LAUNCHERS),$(LAUNCHER))" -a "$(words $(LAUNCHER))" = 1 || \
		{ echo "error: LAUNCHER=$(LAUNCHER) is not a launcher (allowed: $(LAUNCHERS))" >&2; exit 2; }
	@test "$(RETRY_FAILED)" = 0 -o "$(RETRY_FAILED)" = 1 || \
		{ echo "error: RETRY_FAILED=$(RETRY_FAILED) (allowed: 0, 1)" >&2; exit 2; }

plan: check-sweep-vars install need-exp  ## a sweep's jobs, run directories and state (done / to do / failed / running), no training
	$(BIN)/bnlab plan experiment=$(EXP) scale=$(SCALE) $(retry_$(RETRY_FAILED)) $(ARGS)

# the offline Fashion-MNIST is installed only for sweeps that read it (the CPU presets, not SCALE=gpu's CIFAR); a
# config the plan refuses stops here, its one error line said once (not again by the sweep)
sweep-data: install
	@datasets=$$($(BIN)/bnlab plan --datasets experiment=$(EXP) scale=$(SCALE) $(ARGS)) || exit $$?; \
	if echo "$$datasets" | grep -qx fashion_mnist; then $(MAKE) --no-print-directory data; fi

sweep: check-sweep-vars install need-exp sweep-data  ## run a study: EXP=<study> SCALE=cpu|gpu; rerun to resume (skips finished runs)
	$(threads_$(LAUNCHER)) $(BIN)/python -m bnlab.train -m experiment=$(EXP) scale=$(SCALE) $(launcher_$(LAUNCHER)) $(retry_$(RETRY_FAILED)) $(ARGS)

# a pilot tunes a setting (lr, schedule, thresholds) before a study's runs: scored on a split held out from the
# training images (data.val_source=holdout), never on the test split, and kept apart from the study's runs
pilot: install need-exp sweep-data  ## tuning runs of a study on the held-out split: EXP=<study> ARGS="optim.lr=0.1,0.2"
	$(threads_$(LAUNCHER)) $(BIN)/python -m bnlab.train -m experiment=$(EXP) scale=$(SCALE) data.val_source=holdout \
		out_dir=runs/pilots $(launcher_$(LAUNCHER)) $(ARGS)

# collect/figures write beside the runs (runs/<study>/_collected/<scale>/); COMMIT=1 refreshes the committed
# results/<study>/<scale>/ instead, ALL=1 also collects runs outside the study's grid (as separate variants)
COMMIT ?= 0
ALL    ?= 0
results_where_0 :=
results_where_1 := --commit
collect_all_1   := --all

collect: install need-exp  ## the study's grid runs -> runs/<study>/_collected/<scale>/runs.csv, epochs.csv (COMMIT=1: results/)
	$(BIN)/bnlab collect $(EXP) --preset $(SCALE) $(results_where_$(COMMIT)) $(collect_all_$(ALL)) \
		$(foreach w,$(WHERE),--where $(w))

figures: install need-exp  ## collected runs -> the study's tables (md, tex, csv) and figures (png, pdf), same folder
	$(BIN)/bnlab figures $(EXP) --preset $(SCALE) $(results_where_$(COMMIT)) $(if $(filter 1,$(WANDB)),--wandb)

status: install need-exp  ## completed / diverged / failed / interrupted runs of a study
	$(BIN)/bnlab status $(EXP)

sync: install need-exp  ## (re)build every run's W&B run of a study from its metrics.csv (WANDB_MODE=online uploads)
	$(BIN)/bnlab sync $(EXP)

report: install  ## one self-contained HTML page with every committed table and figure -> results/report.html
	$(BIN)/bnlab report

clean:  ## remove run directories (not committed results)
	rm -rf runs outputs multirun
