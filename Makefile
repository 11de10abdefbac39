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

# Debian tools some tests use: headless Chromium renders the HTML report, dciodvfy validates DICOM SEG output.
# Installed when missing and apt-get can (root); otherwise those tests skip, saying why.
TOOLS := /usr/bin/chromium /usr/bin/chromedriver /usr/bin/dciodvfy
tools:
	@missing=""; for t in $(TOOLS); do [ -x $$t ] || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and dicom3tools for the report and DICOM SEG tests"; \
	    (apt-get install -y -q chromium chromium-driver dicom3tools >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver dicom3tools >/dev/null 2>&1)) \
	    || echo "could not install chromium/chromium-driver/dicom3tools: their tests will skip"; \
	  else echo "missing$$missing (not root or no apt-get): their tests will skip"; fi; \
	fi

.PHONY: demo test slow tools bench bench-inference bench-time-to-dice
demo: $(STAMP)
	.venv/bin/medseg demo --out runs/demo

test: $(STAMP) tools
	.venv/bin/lint-imports --no-cache  # the layering of docs/architecture.md (pyproject.toml [tool.importlinter])
# -n auto: one pytest worker per core (pytest-xdist); --dist loadfile keeps each test file, and so its
# module-scoped fixtures (trained runs), on one worker
	$(PY) -m pytest -n auto --dist loadfile; rc=$$?; [ $$rc -ne 5 ] || echo 'pytest ran no test: failing'; exit $$rc

slow: $(STAMP)
	$(PY) -m pytest -m slow

# Benchmarks (not tests): each prints its table and appends a JSON line to benchmarks/results/.
bench: $(STAMP)
	$(PY) -m benchmarks.peak
	$(PY) -m benchmarks.throughput
	$(PY) -m benchmarks.pipeline
	$(PY) -m benchmarks.train_step
	$(PY) -m benchmarks.train_loop
# inference needs a trained run (RUN=runs/x, VOLUME_RUN= a 1-channel run for the 512x512x200 volume);
# time-to-dice trains for 45 minutes (two processes, one per core)
bench-inference: $(STAMP)
	$(PY) -m benchmarks.inference $(RUN) $(if $(VOLUME_RUN),--volume-run $(VOLUME_RUN))
bench-time-to-dice: $(STAMP)
	$(PY) -m benchmarks.time_to_dice --reference
