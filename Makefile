# The two commands of the README: `make demo` and `make test`. Both install what they need.
.PHONY: setup demo test lint bench

setup:
	./scripts/setup.sh

demo: setup
	./scripts/demo.sh

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
