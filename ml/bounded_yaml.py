"""YAML that reads in bounded time and memory: no aliases, limited nesting and node count."""

from __future__ import annotations

from typing import Any

import yaml

# A sweep spec or a config file has a few hundred nodes and four or five levels; these leave
# room for any legitimate spec (two thousand listed values).
MAX_DEPTH = 32
MAX_NODES = 25_000

# libyaml when PyYAML was built with it (the wheels are): ten times the pure-Python speed.
SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NODE_EVENTS = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)
_OPENING = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSING = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


class BoundedYamlError(yaml.YAMLError):
    """A document refused before it is built; the message is one line."""


def _check(text: str | bytes) -> None:
    """Walk the parser's events, which come one at a time, and stop at the first alias (an
    anchor reused under `values:` expands a few hundred bytes into gigabytes: the billion
    laughs), the first level past MAX_DEPTH (PyYAML's composer recurses once per level) or the
    node past MAX_NODES (PyYAML keeps several objects per node, so nodes, not bytes, bound its
    memory), before any node is built."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            _refuse(f"aliases (*{event.anchor}) are not allowed", event)
        if isinstance(event, _NODE_EVENTS):
            nodes += 1
            if nodes > MAX_NODES:
                _refuse(f"more than {MAX_NODES} values in one document", event)
        if isinstance(event, _OPENING):
            depth += 1
            if depth > MAX_DEPTH:
                _refuse(f"nested deeper than {MAX_DEPTH} levels", event)
        elif isinstance(event, _CLOSING):
            depth -= 1


def _refuse(problem: str, event: Any) -> None:
    raise BoundedYamlError(f"{problem} (line {event.start_mark.line + 1})")


def load(text: str | bytes) -> Any:
    """One YAML document; BoundedYamlError (a YAMLError) for anything that cannot be read."""
    try:
        _check(text)
        return yaml.load(text, Loader=SafeLoader)
    except BoundedYamlError:
        raise
    except yaml.MarkedYAMLError as error:
        where = f" (line {error.problem_mark.line + 1})" if error.problem_mark else ""
        raise BoundedYamlError(f"{error.problem or error.context}{where}") from error
    except yaml.YAMLError as error:
        raise BoundedYamlError(str(error).splitlines()[0] if str(error) else "invalid") from error
    except (ValueError, RecursionError) as error:
        # Python refuses integers of over 4,300 digits with a ValueError; a scalar can be any
        # length, so the constructor meets them.
        raise BoundedYamlError(str(error).splitlines()[0]) from error
