"""Every database test here runs over both SPIn dialects (tests/dialects.py)."""

from tests.dialects import dialect, pytest_generate_tests

__all__ = ["dialect", "pytest_generate_tests"]
