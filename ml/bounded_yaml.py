"""YAML that reads in bounded memory: no aliases, limited nesting and node count."""

from __future__ import annotations

from typing import Any, NoReturn

import yaml
from yaml.composer import ComposerError

# A sweep spec or a config file has a few hundred nodes and four or five levels; these leave
# room for any legitimate spec (twenty settings swept over a thousand values each).
MAX_DEPTH = 32
MAX_NODES = 25_000


class BoundedYamlError(yaml.YAMLError):
    """A document refused before it is built; the message is one line."""


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (an anchor reused under `values:` expands a few hundred
    bytes into gigabytes: the billion laughs), nesting deeper than MAX_DEPTH (the composer
    recurses once per level) and more than MAX_NODES nodes (PyYAML keeps several objects per
    node, so node count, not bytes, bounds its memory)."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._refuse(f"aliases (*{event.anchor}) are not allowed", event)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            self._refuse(f"more than {MAX_NODES} values in one document", event)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                self._refuse(f"nested deeper than {MAX_DEPTH} levels", event)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    @staticmethod
    def _refuse(problem: str, event: Any) -> NoReturn:
        raise ComposerError(None, None, problem, event.start_mark)


def load(text: str | bytes) -> Any:
    """One YAML document; BoundedYamlError (a YAMLError) for anything that cannot be read."""
    try:
        return yaml.load(text, Loader=BoundedLoader)
    except yaml.MarkedYAMLError as error:
        where = f" (line {error.problem_mark.line + 1})" if error.problem_mark else ""
        raise BoundedYamlError(f"{error.problem or error.context}{where}") from error
    except yaml.YAMLError as error:
        raise BoundedYamlError(str(error).splitlines()[0] if str(error) else "invalid") from error
    except (ValueError, RecursionError) as error:
        # Python refuses integers of over 4,300 digits with a ValueError; a scalar can be any
        # length, so the constructor meets them.
        raise BoundedYamlError(str(error).splitlines()[0]) from error
