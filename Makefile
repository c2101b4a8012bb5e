# Two commands do all the set-up on a fresh machine:
#   make demo   -> create .venv, install, generate the synthetic demo dataset, train on it, open the app
#   make test   -> create .venv, install, run the whole test suite (CI runs exactly this)
SHELL := /bin/bash
PY := .venv/bin/python
DEMO := data/demo
METHOD ?= meta-finetune
DEMO_RUN := data/runs/demo-$(METHOD)
# The app listens on this machine only (also pinned in app/.streamlit/config.toml, read from any folder).
STREAMLIT := .venv/bin/streamlit run app/Home.py --server.address 127.0.0.1
# The demo's DR auxiliary set is tiny (200 images), so its pretraining is no head start: the scratch recipe
# (lr 0.05, cosine, 15 epochs) reaches test accuracy 0.75 where the fine-tuning recipe (lr 1e-3) stays at 0.55.
DEMO_FLAGS ?= --backbone resnet18 --image-size 64 --recipe scratch

.PHONY: demo test lint bench app

.venv/stamp: requirements.txt requirements-test.txt requirements-bench.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt -r requirements-bench.txt
	touch $@

# make demo METHOD=metalabelnet (or any name from `python -m engine methods`) trains another method.
# A finished demo run is kept and reopened; an interrupted one is resumed.
demo: .venv/stamp
	test -f $(DEMO)/votes.csv || $(PY) -m engine demo-data $(DEMO) --n 400 --seed 0
	$(PY) -m engine inspect $(DEMO)
	if [ -f $(DEMO_RUN)/model.pt ]; then echo "reusing the finished run $(DEMO_RUN)"; \
	elif [ -f $(DEMO_RUN)/checkpoint.pt ]; then $(PY) -m engine run $(DEMO) --out $(DEMO_RUN) --method $(METHOD) --pretrain $(DEMO)/dr_aux $(DEMO_FLAGS) --resume; \
	else rm -rf $(DEMO_RUN); $(PY) -m engine run $(DEMO) --out $(DEMO_RUN) --method $(METHOD) --pretrain $(DEMO)/dr_aux $(DEMO_FLAGS); fi
	$(STREAMLIT) -- --dataset $(DEMO) --run $(DEMO_RUN)

app: .venv/stamp
	$(STREAMLIT)

test: .venv/stamp
	bash scripts/ensure-chromium
	$(PY) -m pytest

lint: .venv/stamp
	.venv/bin/ruff check engine app bench tests

bench: .venv/stamp
	$(PY) bench/step_cost.py
	$(PY) bench/noise_bench.py
