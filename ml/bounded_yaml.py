"""Spec and config documents read in bounded time and memory (YAML: no aliases, limited nesting
and node count) and without duplicate keys (YAML and JSON: a key given twice is a mistake that
would otherwise keep the last value silently)."""

from __future__ import annotations

import json
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


class _Mapping:
    """A mapping being read: the keys seen so far, and whether the next node is a key."""

    __slots__ = ("awaiting_key", "keys")

    def __init__(self) -> None:
        self.keys: set[tuple[str, bool]] = set()
        self.awaiting_key = True


def _check(text: str | bytes) -> None:
    """Walk the parser's events, which come one at a time, and stop at the first alias (an
    anchor reused under `values:` expands a few hundred bytes into gigabytes: the billion
    laughs), the first level past MAX_DEPTH (PyYAML's composer recurses once per level), the
    node past MAX_NODES (PyYAML keeps several objects per node, so nodes, not bytes, bound its
    memory) or a key given twice in one mapping, before any node is built."""
    depth = nodes = 0
    # One entry per open collection: a _Mapping, or None for a sequence; with the role the
    # collection itself plays in its parent mapping ("key", "value" or None).
    open_collections: list[tuple[_Mapping | None, str | None]] = []
    for event in yaml.parse(text, Loader=SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            _refuse(f"aliases (*{event.anchor}) are not allowed", event)
        if isinstance(event, _NODE_EVENTS):
            nodes += 1
            if nodes > MAX_NODES:
                _refuse(f"more than {MAX_NODES} values in one document", event)
            parent = open_collections[-1][0] if open_collections else None
            role = None
            if parent is not None:
                role = "key" if parent.awaiting_key else "value"
                parent.awaiting_key = role == "value"
                if role == "key" and isinstance(event, yaml.ScalarEvent):
                    key = (event.value, event.style is None)
                    if key in parent.keys:
                        _refuse(f"key {event.value!r} given twice", event)
                    parent.keys.add(key)
            if isinstance(event, _OPENING):
                depth += 1
                if depth > MAX_DEPTH:
                    _refuse(f"nested deeper than {MAX_DEPTH} levels", event)
                mapping = _Mapping() if isinstance(event, yaml.MappingStartEvent) else None
                open_collections.append((mapping, role))
                if parent is not None and role == "value":
                    parent.awaiting_key = False  # until this value's collection closes
        elif isinstance(event, _CLOSING):
            depth -= 1
            _closed, role = open_collections.pop()
            if role == "value" and open_collections and open_collections[-1][0] is not None:
                open_collections[-1][0].awaiting_key = True


def load_json(text: str | bytes) -> Any:
    """One JSON document; ValueError for invalid JSON or a key given twice in one object."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    built: dict[str, Any] = {}
    for key, value in pairs:
        if key in built:
            raise ValueError(f"key {key!r} given twice")
        built[key] = value
    return built


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
