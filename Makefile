# Two entry points for a fresh clone: `make demo` and `make test`.
# Both create (or reuse) .venv. torch is pinned and installed first: a looser pin pulls a multi-GB CUDA build.
PY := .venv/bin/python
STAMP := .venv/.medseg-installed

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

.PHONY: demo test slow
demo: $(STAMP)
	.venv/bin/medseg demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest; rc=$$?; [ $$rc -ne 5 ] || echo 'pytest ran no test: failing'; exit $$rc

slow: $(STAMP)
	$(PY) -m pytest -m slow
