"""Suite-wide settings, and one marker per kind of test, given by the folder the test lives in:

    tests/unit/          unit: pure logic, no process or server started
    tests/integration/   integration: real components (apiserver, S3, trainer processes) started here
    tests/e2e/           e2e: a whole user journey, as a user runs it

so `pytest -m unit` is the fast loop and `pytest -m "not e2e"` leaves out the slowest journeys.
"""

import os

import pytest

# Tests never reach a model hub and never spin idle OpenMP threads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

KINDS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = next((k for k in KINDS if f"{os.sep}tests{os.sep}{k}{os.sep}" in str(item.path)), None)
        if kind is None:
            raise pytest.UsageError(
                f"{item.nodeid}: tests live in tests/unit, tests/integration or tests/e2e"
            )
        item.add_marker(getattr(pytest.mark, kind))
