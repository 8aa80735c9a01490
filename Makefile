# The two commands a learner needs: `make course` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NB     ?=

.PHONY: course test lab student lint clean help

help:
	@echo "make course [NB=01]  run the solution notebooks (default profile), write runs/RESULTS.md"
	@echo "make test            run the whole test suite (notebooks in the smoke profile included)"
	@echo "make lab             open JupyterLab at the course"
	@echo "make student         regenerate the exercise copies in notebooks/ from solutions/"
	@echo "make clean           remove executed notebooks, logs and caches (keeps .venv)"

# Create the environment once, and again whenever the project or the pinned versions change.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python 3.10 or newer is needed")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

course: $(STAMP)
	$(PY) scripts/run_course.py --profile default $(if $(NB),--only $(NB),)

test: $(STAMP)
	$(PY) -m pytest

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=.

student: $(STAMP)
	$(PY) scripts/make_student.py

lint: $(STAMP)
	$(VENV)/bin/ruff check course_lib tests benchmarks scripts solutions

clean:
	rm -rf runs lightning_logs .pytest_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
