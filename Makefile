# Two entry points for a fresh clone: `make demo` and `make test`.
# Both create (or reuse) .venv. torch is pinned and installed first: a looser pin pulls a multi-GB CUDA build.
PY := .venv/bin/python
STAMP := .venv/.medseg-installed

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]' torch==2.13.0
# optional: nnU-Net's integrity check for the export tests (~30 s); without it those tests skip
	$(PY) -m pip install -q -e '.[test,nnunet]' torch==2.13.0 \
	  && $(PY) -m pip install -q --no-deps nnunetv2==2.8.1 dynamic-network-architectures==0.4.4 \
	  || echo 'nnunetv2 not installed: the export-nnunet integrity test will skip'
	touch $(STAMP)

.PHONY: demo test slow
demo: $(STAMP)
	.venv/bin/medseg demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest; rc=$$?; [ $$rc -ne 5 ] || echo 'pytest ran no test: failing'; exit $$rc

slow: $(STAMP)
	$(PY) -m pytest -m slow
