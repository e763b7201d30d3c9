# bolt_jax: the two commands are `make demo` and `make test` (README).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is only the Hugging Face oracle in tests (never a core dependency). Pinned so pip takes a known build
# (constraints/cpu.txt pins the same version: change both, through tools/make_constraints.py).
TORCH_SPEC ?= torch==2.13.0
# Every install takes the tested versions from this file (README "Install"; `make constraints` rewrites it).
CONSTRAINTS ?= constraints/cpu.txt
# 8 simulated CPU devices, so every test can build 2x2x2 meshes.
TEST_ENV := JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=8 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTEST_ARGS ?=
# `make test` and `make test-slow` run their files on this many pytest-xdist workers (a file stays on one worker:
# module fixtures are built once); on the 2-core CI machine 2 takes `make test` from about 16 to 13 minutes and
# `make test-slow` from 26 to 19. PYTEST_WORKERS=0 runs them in one process.
PYTEST_WORKERS ?= 2
DEMO_ARGS ?=

.PHONY: test test-slow lint demo venv clean-venv constraints

$(VENV)/.created:
	@PYBIN="$$(.ci/find_python.sh)" || exit 1; \
	echo "creating $(VENV) with $$PYBIN"; \
	"$$PYBIN" -m venv $(VENV) && $(PY) -m pip install -q --upgrade pip
	@touch $@

# Test environment: the package with test extras, plus torch installed first (so nothing pulls another build).
$(VENV)/.installed-test: $(VENV)/.created pyproject.toml $(CONSTRAINTS)
	$(PY) -m pip install -q -c $(CONSTRAINTS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[test]"
	@touch $@

# Demo environment: the package only; no torch.
$(VENV)/.installed-demo: $(VENV)/.created pyproject.toml $(CONSTRAINTS)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e .
	@touch $@

venv: $(VENV)/.installed-test

test: $(VENV)/.installed-test lint
	$(TEST_ENV) $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# ruff, configured in pyproject.toml (line length 120); part of `make test`
lint: $(VENV)/.installed-test
	$(PY) -m ruff check .

test-slow: $(VENV)/.installed-test
	$(TEST_ENV) $(PY) -m pytest -q -m slow -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

demo: $(VENV)/.installed-demo
	JAX_PLATFORMS=cpu $(PY) -m bolt_jax.main --config configs/demo.py $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)

# Rewrites constraints/{cpu,gpu,tpu}.txt, keeping this venv's versions where each target's tested pins allow;
# `make constraints SEED_ENV=` resolves the newest versions instead (then `make clean-venv test` to try them).
SEED_ENV ?= $(VENV)
constraints: $(VENV)/.installed-test
	$(PY) tools/make_constraints.py --seed_env "$(SEED_ENV)"
