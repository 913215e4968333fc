# pwl — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXPERIMENT ?= fmnist_resnet_narrow
SEEDS ?= 3
BUNDLE ?= runs/reproduce/$(EXPERIMENT)/bundle
BANDWIDTH ?=
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
FMNIST_FILE := $(FMNIST_DIR)/train-images-idx3-ubyte.gz
PYTEST_ARGS ?=
OVERRIDES ?=              # Hydra overrides for every reproduce run; the seeds tables used trainer.precision=32-true channels_last=false
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install data nginx test stress lint reproduce reproduce-seeds reproduce-all reproduce-lm data-kjv record orders plans sweep-losses reproduce-cifar10 \
        reproduce-cifar100 bench-train bench-load serve serve-http docs

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk -F':.*## ' '{printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) data data-kjv nginx ## Create .venv with pwl and its dev tools, and install Fashion-MNIST, the KJV and nginx

# $(call apt-install,<test that it is there>,<Debian package>,<what>,<advice when apt is not usable>)
define apt-install
	@if $(1); then \
	  echo "$(3): installed"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2); \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2); \
	else \
	  echo "$(3) is not installed and apt is not usable here: sudo apt-get install $(2), $(4)"; \
	fi
endef

data: ## Install Debian's dataset-fashion-mnist where apt and root are available
	$(call apt-install,[ -f "$(FMNIST_FILE)" ],dataset-fashion-mnist,Fashion-MNIST,or copy the four idx .gz files somewhere and pass data.root=<dir> (with internet: data.download=true))

nginx: ## Install Debian's nginx-light (the web server of the HTTP tests) where apt and root are available
	$(call apt-install,command -v nginx >/dev/null || [ -x /usr/sbin/nginx ],nginx-light,nginx,or put any nginx on PATH (the tests that need it skip))

data-kjv: ## Install Debian's bible-kjv (the text of data=kjv) where apt and root are available
	$(call apt-install,command -v bible >/dev/null,bible-kjv,the King James Bible (bible-kjv),or use data.source=synthetic)

test: install ## Run the test suite (CPU, a few minutes; TEST_WORKERS=2 processes, 1 thread each)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

stress: install ## Long runs of the bundle fuzzer and of predicting while a bundle loads (minutes)
	PWL_FUZZ_EXAMPLES=$${PWL_FUZZ_EXAMPLES:-5000} PWL_STRESS_PREDICTIONS=$${PWL_STRESS_PREDICTIONS:-100000} \
	  OMP_NUM_THREADS=1 $(PY) -m pytest -q tests/test_security.py tests/test_stress.py $(PYTEST_ARGS)

docs: $(STAMP) ## Build the user guide (docs/, mkdocs-material) into site/; works offline
	$(PY) -m mkdocs build --strict --site-dir site

lint: $(STAMP) ## Check the code with ruff
	$(PY) -m ruff check pwl tests experiments

reproduce: install ## Default experiment end to end (teacher, PWL, KD, stages, bundle, report under runs/), compared with the record
	$(PY) experiments/reproduce.py --experiment $(EXPERIMENT) --losses pwl kd -- $(OVERRIDES)

reproduce-lm: install ## Language model on the KJV (experiment=lm_kjv): teacher, PWL, KD, stages, bundle, report (CPU)
	$(PY) experiments/reproduce.py --experiment lm_kjv --losses pwl kd \
	  --seeds $$(seq 0 $$(($(SEEDS) - 1))) -- $(OVERRIDES)

reproduce-seeds: install ## One teacher, then pwl, recipe=paper, kd, post-hoc adapters and teacher early exit for SEEDS seeds (OVERRIDES=, e.g. the records' fp32); compared with the record
	$(PY) experiments/reproduce.py --experiment $(EXPERIMENT) --losses pwl paper kd posthoc \
	  --early-exit --seeds $$(seq 0 $$(($(SEEDS) - 1))) --runs runs/reproduce/$(EXPERIMENT)_seeds \
	  --record experiments/results/$(EXPERIMENT)_seeds -- $(OVERRIDES)

reproduce-all: install ## reproduce-seeds' runs and plans for the three families on Fashion-MNIST (OVERRIDES= as above)
	for e in fmnist_resnet_narrow fmnist_vgg fmnist_vit; do \
	  $(PY) experiments/reproduce.py --experiment $$e --losses pwl paper kd posthoc --early-exit \
	    --seeds $$(seq 0 $$(($(SEEDS) - 1))) -- $(OVERRIDES) && \
	  $(PY) experiments/plans.py --experiment $$e || exit 1; done

record: ## Write a finished run's report into the tracked record: RUN=runs/reproduce/<name> (or runs/plans/<name>) RECORD=experiments/results/<name>
	@test -f "$(RUN)/report/provenance.json" || { echo "RUN=$(RUN) has no finished report (make reproduce first)"; exit 2; }
	@test -n "$(RECORD)" || { echo "RECORD=experiments/results/<name> is not set"; exit 2; }
	mkdir -p $(RECORD) && cp -r $(RUN)/report/. $(RECORD)/

SEEDS_RECORDS ?= experiments/results/fmnist_resnet_narrow_seeds experiments/results/fmnist_vgg_seeds experiments/results/fmnist_vit_seeds experiments/results/lm_kjv
orders: $(STAMP) ## Prefix vs suffix vs window within each recorded run, with 95% intervals over seeds (from the records' report.csv) into experiments/results/orders
	$(PY) experiments/orders.py $(SEEDS_RECORDS) --out experiments/results/orders

plans: install ## All-mask table, loading plan and fp32/fp16/int8 bundles of EXPERIMENT's reproduce run
	$(PY) experiments/plans.py --experiment $(EXPERIMENT)

sweep-losses: install ## Multirun: alignment distances x cross-path modes on the default pair, then a report
	$(PY) experiments/reproduce.py --experiment $(EXPERIMENT) --only teacher
	$(PY) -m pwl.train -m phase=distill experiment=$(EXPERIMENT) logger=csv \
	  teacher=runs/reproduce/$(EXPERIMENT)/teacher sweep=alignment_losses \
	  loss.terms.cross_path.mode=random,all_prefix hydra.sweep.dir=multirun/sweep-losses
	$(PY) -m pwl.report multirun/sweep-losses --out experiments/results/sweep-losses

reproduce-cifar10: install ## CIFAR-10 ResNet pair at the paper's scale with its recipe (recipe=paper) beside pwl and kd (GPU; data in data/ or PWL_DATA_DIR)
	$(PY) experiments/reproduce.py --experiment cifar_resnet --losses paper pwl kd \
	  --runs runs/reproduce/cifar10_resnet -- data=cifar10 trainer=gpu $(OVERRIDES)

reproduce-cifar100: install ## CIFAR-100 ResNet pair at the paper's scale with its recipe (recipe=paper) beside pwl and kd (GPU; data in data/ or PWL_DATA_DIR)
	$(PY) experiments/reproduce.py --experiment cifar_resnet --losses paper pwl kd \
	  --runs runs/reproduce/cifar100_resnet -- data=cifar100 trainer=gpu $(OVERRIDES)

bench-train: install ## Distill step and stage evaluation of 4 pairs: images/s, overhead, step/floor, vs naive; speed switches vs fp32; the step table again under the training defaults
	$(PY) experiments/bench_train.py --eval --levers
	$(PY) experiments/bench_train.py --switches channels_last+bf16

bench-load: install ## Time to first answer and peak memory: whole teacher vs bundle (trained bundle + random ViT-B/16 pair)
	$(PY) -m pwl.bench $(if $(wildcard $(BUNDLE)/manifest.json),bundle=$(BUNDLE))

serve: install ## Answer test images while the bundle loads (BUNDLE=<dir>, BANDWIDTH=20MB to emulate a download)
	$(PY) -m pwl.serve bundle=$(BUNDLE) $(if $(BANDWIDTH),bandwidth=$(BANDWIDTH))

RATE ?= 2m
serve-http: install ## Serve test images from a bundle by URL: nginx (as you, on 127.0.0.1, limit_rate RATE=2m) hosts BUNDLE, or a short EXPERIMENT run's export when absent
	@set -e; nginx=$$(command -v nginx || echo /usr/sbin/nginx); \
	test -x "$$nginx" || { echo "nginx is not installed: make nginx (or sudo apt-get install nginx-light)"; exit 2; }; \
	tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/pwl-serve-http.XXXXXX"); pid=; \
	trap 'test -n "$$pid" && kill $$pid 2>/dev/null; wait 2>/dev/null; rm -rf "$$tmp"' EXIT INT TERM; \
	bundle="$(BUNDLE)"; \
	if [ ! -f "$$bundle/manifest.json" ]; then \
	  echo "no bundle in $$bundle (make reproduce writes it): exporting one of a short $(EXPERIMENT) run"; \
	  $(PY) -m pwl.train phase=teacher experiment=$(EXPERIMENT) debug=fast hydra.run.dir=$$tmp/teacher >$$tmp/train.log 2>&1; \
	  $(PY) -m pwl.train phase=distill experiment=$(EXPERIMENT) debug=fast teacher=$$tmp/teacher \
	    hydra.run.dir=$$tmp/distill >>$$tmp/train.log 2>&1; \
	  $(PY) -m pwl.export checkpoint=$$tmp/distill out=$$tmp/bundle >>$$tmp/train.log 2>&1; bundle=$$tmp/bundle; \
	fi; \
	port=$$($(PY) -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
	mkdir -p $$tmp/nginx; \
	printf '%s\n' 'daemon off;' 'master_process off;' 'worker_processes 1;' "pid $$tmp/nginx/nginx.pid;" \
	  "error_log $$tmp/nginx/error.log warn;" 'events { worker_connections 64; }' 'http {' '  access_log off;' \
	  "  client_body_temp_path $$tmp/nginx/body; proxy_temp_path $$tmp/nginx/proxy;" \
	  "  fastcgi_temp_path $$tmp/nginx/fastcgi; uwsgi_temp_path $$tmp/nginx/uwsgi; scgi_temp_path $$tmp/nginx/scgi;" \
	  '  default_type application/octet-stream;' "  server { listen 127.0.0.1:$$port;" \
	  "    location /bundle/ { alias $$(realpath $$bundle)/; limit_rate $(RATE); } }" '}' >$$tmp/nginx/nginx.conf; \
	"$$nginx" -c $$tmp/nginx/nginx.conf -p $$tmp/nginx -e $$tmp/nginx/error.log & pid=$$!; \
	for i in $$(seq 50); do $(PY) -c "import socket; socket.create_connection(('127.0.0.1', $$port), 0.2)" 2>/dev/null && break; sleep 0.1; done; \
	echo "nginx serves $$bundle at http://127.0.0.1:$$port/bundle/ (limit_rate $(RATE) per connection)"; \
	$(PY) -m pwl.serve bundle=http://127.0.0.1:$$port/bundle/
