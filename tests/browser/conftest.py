"""The shared browser fixtures (tests/browser_support.py) for the tests of this folder."""

from collections.abc import Generator
from typing import Any

import pytest

from tests.browser_support import chromium, page, static_site

__all__ = ["chromium", "page", "static_site"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, Any]:
    # Lets the `page` fixture see whether the test failed, to keep a screenshot of it.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
