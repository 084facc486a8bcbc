"""YAML that a user hands us (a YOLO ``data.yaml``, a run config, a ``key=value`` override), read without aliases.

``yaml.safe_load`` builds no objects from tags, but it follows anchors and aliases: 334 bytes of nested
``&a [*b, *b, ...]`` (a "billion laughs") load as a few shared lists and expand to billions of items the moment
anything walks, prints or copies them (1.9-3.9 GB and minutes in the YOLO importer). No file CerviCurve reads
needs an alias, so ``NoAliasLoader`` refuses the first anchor or alias it meets, before anything is built:
the refusal depends on the file's structure, never on how much was allocated.
"""
from __future__ import annotations

from typing import Any

import yaml


class YAMLAliasError(yaml.YAMLError):
    """An anchor (``&name``) or alias (``*name``) in user YAML; a ``yaml.YAMLError``, so existing handlers see it."""

    def __init__(self, mark):
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        super().__init__(f"{where}YAML anchors and aliases (&name, *name) are refused (they can expand to billions "
                         "of items); write the values out in full")


class NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that stops at the first anchor or alias (pure Python: the C loader cannot be hooked)."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise YAMLAliasError(event.start_mark)
        return super().compose_node(parent, index)


def load(text: str | bytes) -> Any:
    """``yaml.safe_load`` without anchors or aliases; ``yaml.YAMLError`` (``YAMLAliasError``) when it has one."""
    return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
