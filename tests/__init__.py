"""goop test suite."""
