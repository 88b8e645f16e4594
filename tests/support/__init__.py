"""What the tests share: real servers (PostgreSQL, MariaDB, gearmand), the daemon harness, and the
fixtures and helpers more than one test module uses. tests/conftest.py loads the fixture modules
through `pytest_plugins`; test modules import plain helpers from here and never from each other."""
