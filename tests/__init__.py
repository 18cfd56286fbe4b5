"""The test suite (a package, so helpers such as tests.dbtime import the same way everywhere)."""
