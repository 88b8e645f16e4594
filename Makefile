# The two commands of the README: `make demo` and `make test`. Each installs what it needs: the
# demo only Python's venv and this project, the tests everything (servers, Perl peers, extras).
.PHONY: setup setup-demo demo test lint bench

setup:
	./scripts/setup.sh test

setup-demo:
	@./scripts/setup.sh demo

demo: setup-demo
	@./scripts/demo.sh

test: setup
	.venv/bin/python -m ruff check workermanager tests bench docs/hooks
	.venv/bin/python -m pytest -p no:cacheprovider -q -n 3

lint: setup
	.venv/bin/python -m ruff check workermanager tests bench docs/hooks

bench: setup
	.venv/bin/python bench/run_all.py

# The documentation site (mkdocs.yml, docs/) into site/, warnings as errors; tests/test_docs_site.py builds it too
.PHONY: docs
docs: setup
	.venv/bin/python -m mkdocs build --strict
