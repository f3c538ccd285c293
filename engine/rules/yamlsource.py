"""Load YAML while remembering the line of every mapping key and list item.

Validation errors carry a location path such as ``("steps", 3, "config", "timeout")``;
:class:`LineMap` turns that path back into the line an operator should look at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys instead of silently keeping the last one."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None,
                f"duplicate key {key!r} (first at line {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass
class LineMap:
    """Maps a location path inside one YAML document to a 1-based line number."""

    lines: dict[Path, int] = field(default_factory=dict)

    def line(self, path: Path) -> int:
        # Walk up until a recorded ancestor: a missing field is reported on its parent.
        for end in range(len(path), -1, -1):
            found = self.lines.get(tuple(path[:end]))
            if found is not None:
                return found
        return 1


def _index(node: yaml.Node, path: Path, out: dict[Path, int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            out[(*path, key)] = key_node.start_mark.line + 1
            _index(value_node, (*path, key), out)
            # Point the key itself, not the value's first line, for scalars and blocks alike.
            out[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), out)


def load_documents(text: str) -> list[tuple[Any, LineMap]]:
    """Parse every document of a YAML stream. Raises ``yaml.YAMLError`` with a mark."""
    out: list[tuple[Any, LineMap]] = []
    for node in yaml.compose_all(text, Loader=_Loader):
        if node is None:
            continue
        lines: dict[Path, int] = {}
        _index(node, (), lines)
        loader = _Loader("")
        try:
            data = loader.construct_document(node)
        finally:
            loader.dispose()
        out.append((data, LineMap(lines)))
    return out


def yaml_error_line(exc: yaml.YAMLError, text: str = "") -> tuple[int, str]:
    problem_mark = getattr(exc, "problem_mark", None)
    context_mark = getattr(exc, "context_mark", None)
    last_line = max(1, len(text.splitlines())) if text else None
    # At the end of the stream (an unclosed bracket) the opening is the useful place.
    at_end = (problem_mark is not None and context_mark is not None and last_line is not None
              and problem_mark.line + 1 > last_line)
    mark = context_mark if at_end else (problem_mark or context_mark)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"YAML: {problem}" + (f" ({context})" if context and "duplicate" not in problem else "")
    return line, message
