# Developer shortcuts. Benchmarks are plain scripts, not part of the test suite.
PYTHON ?= python

.PHONY: bench bench-quick

## bench: run every benchmark script in benchmarks/ (a few minutes each; results in benchmarks/out/)
bench:
	@for script in benchmarks/bench_*.py; do \
		echo "== $$script"; \
		$(PYTHON) $$script || exit 1; \
	done

## bench-quick: the same with --quick (fewer samples, slow projections extrapolated)
bench-quick:
	@for script in benchmarks/bench_*.py; do \
		echo "== $$script --quick"; \
		$(PYTHON) $$script --quick || exit 1; \
	done
