# The two commands of the README. Both set up everything they need first.
.PHONY: bootstrap demo test lint bench bench-quick micro

bootstrap:
	./scripts/bootstrap

# pgwarden in front of a throwaway local PostgreSQL; prints the psql connection string.
demo: bootstrap
	pgwarden demo

# The whole test suite (unit, end-to-end against a real PostgreSQL, ruff, mypy --strict).
test: bootstrap
	python3 -m pytest

bench: bootstrap
	python3 -m benchmarks.compare

bench-quick: bootstrap
	python3 -m benchmarks.compare --quick

micro: bootstrap
	python3 -m pytest benchmarks/micro --benchmark-enable --benchmark-only -p no:cacheprovider
