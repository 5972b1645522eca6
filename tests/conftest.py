"""Suite-wide settings, and one marker per kind of test, given by the folder the test lives in:

    tests/unit/          unit: pure logic, no process or server started
    tests/integration/   integration: real components (apiserver, S3, trainer processes) started here
    tests/e2e/           e2e: a whole user journey, as a user runs it
    tests/rollout/       rollout: the Gateway API data plane (Envoy Gateway, Envoy, pods played by the
                         tests' kubelet), in a network namespace of its own (tests/gateway/netns.sh)

so `pytest -m unit` is the fast loop and `pytest -m "not e2e"` leaves out the slowest journeys.

Tests marked `trainer_image` (building the 6.6 GB trainer image) are deselected unless `--trainer-image`
is given (`make images-test`): left out of `make test` by name, never skipped.
"""

import os

import pytest

# Tests never reach a model hub and never spin idle OpenMP threads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

KINDS = ("unit", "integration", "e2e", "rollout")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--trainer-image",
        action="store_true",
        help="also build and inspect the trainer image (tests marked trainer_image)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--trainer-image"):
        left_out = [item for item in items if item.get_closest_marker("trainer_image")]
        if left_out:
            config.hook.pytest_deselected(items=left_out)
            items[:] = [item for item in items if not item.get_closest_marker("trainer_image")]
    for item in items:
        kind = next((k for k in KINDS if f"{os.sep}tests{os.sep}{k}{os.sep}" in str(item.path)), None)
        if kind is None:
            raise pytest.UsageError(
                f"{item.nodeid}: tests live in tests/unit, tests/integration, tests/e2e or tests/rollout"
            )
        item.add_marker(getattr(pytest.mark, kind))
