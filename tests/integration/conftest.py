"""The real stack for integration tests: brought up once per session by the suite itself
(installing what is missing), and stopped at the end so no process is left behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streams.settings import Settings
from streams.stack.orchestrate import PlainProgress, Stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[Stack]:
    stack = Stack(settings)
    stack.up(demo=False, progress=PlainProgress())
    yield stack
    stack.down(PlainProgress())


@pytest.fixture(scope="session")
def erp(stack: Stack) -> str:
    return stack.settings.erp.dsn


@pytest.fixture(scope="session")
def crm(stack: Stack) -> str:
    return stack.settings.crm.dsn
