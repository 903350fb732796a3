"""The menu model as dbusmenu items: stable ids, properties, GetLayout's tree and what a rebuild changed."""

from __future__ import annotations

from dataclasses import replace

from tray.core.status import LoadedModelStatus, MonitorState, make_status
from tray.ui.dbusmenu import LAYOUT_SIGNATURE, MenuIds, build_layout, layout_change
from tray.ui.menu import MenuEntry, build_menu

SETTINGS = {"notifications": True, "autostart": False, "stop_ollama_on_quit": False}
HEALTHY = make_status()
LLAMA3 = LoadedModelStatus("llama3:latest", 4_661_224_676, 0)
MY_MODEL = LoadedModelStatus("my_model:latest", 2_000_000_000, 0)


def labels(layout, parent: int = 0) -> list[str]:
    return [
        "---"
        if layout.nodes[child].properties.get("type") == ("s", "separator")
        else layout.nodes[child].properties["label"][1]
        for child in layout.nodes[parent].children
    ]


def test_every_entry_becomes_an_item_under_the_root() -> None:
    entries = build_menu(HEALTHY, SETTINGS, set())
    layout = build_layout(entries, MenuIds())
    assert labels(layout) == [
        "Ollama: healthy · 245 ms",
        "Model: uncensored-llama3",
        "No models in memory",
        "Unload models",
        "---",
        "Stop Ollama",
        "Restart Ollama",
        "Rebuild model",
        "Open dashboard",
        "Open logs",
        "---",
        "Start at login",
        "Notifications",
        "---",
        "Quit",
    ]
    assert layout.nodes[0].properties == {"children-display": ("s", "submenu")}
    ids = layout.nodes[0].children
    assert len(set(ids)) == len(ids) == 15  # three separators, three ids


def test_properties_carry_enabled_and_checkmarks() -> None:
    layout = build_layout(build_menu(HEALTHY, {**SETTINGS, "autostart": True}, set()), MenuIds())
    by_label = {node.properties.get("label", ("s", "---"))[1]: node for node in layout.nodes.values()}
    assert by_label["Ollama: healthy · 245 ms"].properties == {
        "label": ("s", "Ollama: healthy · 245 ms"),
        "enabled": ("b", False),
    }
    assert by_label["Start at login"].properties == {
        "label": ("s", "Start at login"),
        "toggle-type": ("s", "checkmark"),
        "toggle-state": ("i", 1),
    }
    assert by_label["Unload models"].properties["enabled"] == ("b", False)
    assert (by_label["Restart Ollama"].action, by_label["Restart Ollama"].enabled) == ("restart", True)
    assert by_label["Ollama: healthy · 245 ms"].action is None


def test_underscores_are_not_mnemonics() -> None:
    layout = build_layout(build_menu(replace(HEALTHY, loaded_models=(MY_MODEL,)), SETTINGS, set()), MenuIds())
    assert "my__model:latest 2 GB · 100% CPU" in labels(layout)


def test_get_layout_tree_depth_and_property_names() -> None:
    layout = build_layout([MenuEntry("Top", submenu=(MenuEntry("Inner", "quit"),), key="top")], MenuIds())
    top = layout.nodes[0].children[0]
    inner = layout.nodes[top].children[0]
    assert layout.tree() == (
        0,
        {"children-display": ("s", "submenu")},
        [
            (
                LAYOUT_SIGNATURE,
                (
                    top,
                    {"label": ("s", "Top"), "children-display": ("s", "submenu")},
                    [(LAYOUT_SIGNATURE, (inner, {"label": ("s", "Inner")}, []))],
                ),
            )
        ],
    )
    assert layout.tree(0, 1, ["label"]) == (0, {}, [(LAYOUT_SIGNATURE, (top, {"label": ("s", "Top")}, []))])
    assert layout.tree(top, 0) == (top, {"label": ("s", "Top"), "children-display": ("s", "submenu")}, [])
    assert layout.group_properties([inner, 999], ["label"]) == [(inner, {"label": ("s", "Inner")})]
    assert [item for item, _ in layout.group_properties([])] == [top, inner]


def test_ids_stay_with_their_entry_across_rebuilds() -> None:
    ids = MenuIds()
    healthy = build_layout(build_menu(HEALTHY, SETTINGS, set()), ids)
    restarting = build_layout(build_menu(HEALTHY, SETTINGS, {"restart"}), ids)
    restart_id = next(n.id for n in healthy.nodes.values() if n.action == "restart")
    assert restarting.nodes[restart_id].action == "restart"
    assert healthy.structure() == restarting.structure()


def test_a_label_or_state_change_is_a_property_update() -> None:
    ids = MenuIds()
    before = build_layout(build_menu(HEALTHY, SETTINGS, set()), ids)
    after = build_layout(build_menu(HEALTHY, {**SETTINGS, "autostart": True}, {"restart"}), ids)
    change = layout_change(before, after)
    assert change.layout_changed is False
    updated = dict(change.updated)
    status_id = before.nodes[0].children[0]
    assert updated[status_id] == {"label": ("s", "Restarting Ollama…")}
    toggle_id = next(n.id for n in before.nodes.values() if n.action == "toggle_autostart")
    assert updated[toggle_id] == {"toggle-state": ("i", 1)}
    assert all(
        props == {"enabled": ("b", False)}
        for node_id, props in updated.items()
        if node_id not in (status_id, toggle_id)
    )
    back = layout_change(after, before)
    assert dict(back.removed) == {node_id: ("enabled",) for node_id in updated if node_id not in (status_id, toggle_id)}


def test_models_coming_and_going_change_the_layout() -> None:
    ids = MenuIds()
    none = build_layout(build_menu(HEALTHY, SETTINGS, set()), ids)
    one = build_layout(build_menu(replace(HEALTHY, loaded_models=(LLAMA3,)), SETTINGS, set()), ids)
    two = build_layout(build_menu(replace(HEALTHY, loaded_models=(LLAMA3, MY_MODEL)), SETTINGS, set()), ids)
    assert layout_change(none, one).layout_changed is True
    assert layout_change(one, two).layout_changed is True
    assert layout_change(two, two).empty


def test_start_and_stop_are_different_items() -> None:
    ids = MenuIds()
    running = build_layout(build_menu(HEALTHY, SETTINGS, set()), ids)
    stopped_status = replace(HEALTHY, state=MonitorState.STOPPED, ollama_running=False)
    stopped = build_layout(build_menu(stopped_status, SETTINGS, set()), ids)
    assert layout_change(running, stopped).layout_changed is True
    assert "Start Ollama" in labels(stopped) and "Stop Ollama" not in labels(stopped)
