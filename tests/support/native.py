"""The mark of the test modules that run the own C++ and torch kernels: pytest-isolated runs them together in one
subprocess, so a segfault in a kernel fails the tests of that process and the rest of the suite still reports.
One process for all of them rather than one per module: each process pays Python, torch, transformers and
pytest's plugins again (several seconds on a 2-core machine)."""
import pytest

NATIVE_KERNELS = pytest.mark.isolated(group="native-kernels")
