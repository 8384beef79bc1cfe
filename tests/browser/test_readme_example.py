"""The README's browser example is the page the browser tests load, character for character."""

import re

from tests.conftest import REPO


def test_the_readme_shows_the_tested_page() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Calling from a browser", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```html\n(.*?)```", section, flags=re.DOTALL)
    page = (REPO / "docs" / "examples" / "browser.html").read_text()
    assert blocks == [page]
    assert len(page.splitlines()) <= 35  # a page a reader takes in at a glance
