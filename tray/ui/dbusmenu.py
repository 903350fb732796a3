"""The tray menu as ``com.canonical.dbusmenu`` items: ids, properties, the layout and what changed.

Pure: a list of :class:`~tray.ui.menu.MenuEntry` goes in, D-Bus values come
out in jeepney's form (a variant is a ``(signature, value)`` pair).
:mod:`tray.ui.sni` puts them on the bus. Item ids stay the same for the same
entry key across rebuilds, so a host that holds an id from an older layout
still reaches the same entry; a property change is sent as
``ItemsPropertiesUpdated`` and only a change of which items exist, or their
order, needs a new layout revision (``LayoutUpdated``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tray.ui.menu import MenuEntry

ROOT_ID = 0
LAYOUT_SIGNATURE = "(ia{sv}av)"

Variant = tuple[str, Any]
Properties = dict[str, Variant]
LayoutTree = tuple[int, Properties, list[tuple[str, Any]]]


def escape_label(text: str) -> str:
    """A label with its underscores doubled: a single ``_`` marks a mnemonic in dbusmenu.

    >>> escape_label("my_model:latest 4.7 GB")
    'my__model:latest 4.7 GB'
    """
    return text.replace("_", "__")


def entry_properties(entry: MenuEntry) -> Properties:
    """The dbusmenu properties of one entry, leaving out those at their default value.

    >>> entry_properties(MenuEntry("Start at login", "toggle_autostart", checked=False))
    {'label': ('s', 'Start at login'), 'toggle-type': ('s', 'checkmark'), 'toggle-state': ('i', 0)}
    >>> entry_properties(MenuEntry("llama3:latest", "use_model:llama3:latest", checked=True, radio=True))["toggle-type"]
    ('s', 'radio')
    >>> entry_properties(MenuEntry(separator=True, enabled=False, key="-"))
    {'type': ('s', 'separator')}
    """
    if entry.separator:
        return {"type": ("s", "separator")}
    properties: Properties = {"label": ("s", escape_label(entry.label))}
    if not entry.enabled:
        properties["enabled"] = ("b", False)
    if entry.checked is not None:
        properties["toggle-type"] = ("s", "radio" if entry.radio else "checkmark")
        properties["toggle-state"] = ("i", 1 if entry.checked else 0)
    if entry.submenu:
        properties["children-display"] = ("s", "submenu")
    return properties


class MenuIds:
    """Stable item ids: the same entry key always gets the same id, and an id is never reused."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def id_for(self, key: str) -> int:
        """The id of ``key``, assigned on first use (1, 2, 3, …; 0 is the root)."""
        if key not in self._ids:
            self._ids[key] = len(self._ids) + 1
        return self._ids[key]


@dataclass(frozen=True)
class MenuNode:
    """One dbusmenu item: its properties, its children's ids and the action a click runs."""

    id: int
    properties: Properties
    children: tuple[int, ...] = ()
    action: str | None = None
    enabled: bool = True


@dataclass(frozen=True)
class Layout:
    """A whole menu as dbusmenu items, root (id 0) included."""

    nodes: Mapping[int, MenuNode] = field(default_factory=dict)

    def structure(self) -> dict[int, tuple[int, ...]]:
        """Each item's children: what a ``LayoutUpdated`` is about."""
        return {node_id: node.children for node_id, node in self.nodes.items()}

    def tree(self, parent_id: int = ROOT_ID, depth: int = -1, names: Sequence[str] = ()) -> LayoutTree:
        """``GetLayout``'s ``(ia{sv}av)`` from ``parent_id``: ``depth`` levels of children (-1: all).

        Raises KeyError for an unknown id.
        """
        node = self.nodes[parent_id]
        children: list[tuple[str, Any]] = []
        if depth != 0:
            children = [(LAYOUT_SIGNATURE, self.tree(child, depth - 1, names)) for child in node.children]
        return (node.id, select(node.properties, names), children)

    def group_properties(self, ids: Iterable[int], names: Sequence[str] = ()) -> list[tuple[int, Properties]]:
        """``GetGroupProperties``: the known ids among ``ids`` (every item when empty) with their properties."""
        wanted = list(ids) or [node_id for node_id in sorted(self.nodes) if node_id != ROOT_ID]
        return [(node_id, select(self.nodes[node_id].properties, names)) for node_id in wanted if node_id in self.nodes]


def select(properties: Properties, names: Sequence[str]) -> Properties:
    """The properties named in ``names``, or all of them when ``names`` is empty."""
    if not names:
        return dict(properties)
    return {name: value for name, value in properties.items() if name in names}


def build_layout(entries: Sequence[MenuEntry], ids: MenuIds) -> Layout:
    """The dbusmenu layout of ``entries``; separators and other repeated keys get one id per occurrence."""
    nodes: dict[int, MenuNode] = {}
    seen: dict[str, int] = {}

    def add(items: Sequence[MenuEntry]) -> tuple[int, ...]:
        children = []
        for entry in items:
            seen[entry.key] = seen.get(entry.key, 0) + 1
            key = entry.key if seen[entry.key] == 1 else f"{entry.key}#{seen[entry.key]}"
            node_id = ids.id_for(key)
            grandchildren = add(entry.submenu)
            nodes[node_id] = MenuNode(
                node_id,
                entry_properties(entry),
                grandchildren,
                action=None if entry.separator or entry.submenu else entry.action,
                enabled=entry.enabled and not entry.separator,
            )
            children.append(node_id)
        return tuple(children)

    root_children = add(entries)
    nodes[ROOT_ID] = MenuNode(ROOT_ID, {"children-display": ("s", "submenu")}, root_children)
    return Layout(nodes)


@dataclass(frozen=True)
class LayoutChange:
    """What to tell hosts after a rebuild: a new layout revision, or which properties changed."""

    layout_changed: bool = False
    updated: tuple[tuple[int, Properties], ...] = ()
    removed: tuple[tuple[int, tuple[str, ...]], ...] = ()

    @property
    def empty(self) -> bool:
        """Whether there is nothing to tell."""
        return not (self.layout_changed or self.updated or self.removed)


def layout_change(old: Layout, new: Layout) -> LayoutChange:
    """What changed from ``old`` to ``new``.

    A different set or order of items is a layout change (hosts fetch the new
    layout); otherwise each item whose properties differ is listed with its
    new values, and a property that went away (back to its default) is listed
    as removed.
    """
    if old.structure() != new.structure():
        return LayoutChange(layout_changed=True)
    updated: list[tuple[int, Properties]] = []
    removed: list[tuple[int, tuple[str, ...]]] = []
    for node_id, node in new.nodes.items():
        before = old.nodes[node_id].properties
        changed = {name: value for name, value in node.properties.items() if before.get(name) != value}
        gone = tuple(sorted(name for name in before if name not in node.properties))
        if changed:
            updated.append((node_id, changed))
        if gone:
            removed.append((node_id, gone))
    return LayoutChange(False, tuple(updated), tuple(removed))
