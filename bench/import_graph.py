"""Import-graph figures of tray/ at some revisions: how the layout reads and how the layers hold.

For each revision: modules per folder, import edges, import cycles, upward (and sideways) imports
against the layer order, and how much of the app ``import tray.gateway.app`` pulls in.

    python3 bench/import_graph.py                  # c2a8ed0 (before the architecture work) and HEAD
    python3 bench/import_graph.py REV [REV ...]    # any revisions, oldest first
    python3 bench/import_graph.py --json ...       # the same figures as JSON

Method, the same at every revision:
- the revision's tray/ is exported (``git archive``) to a temp dir and its graph is built there by
  grimp (``grimp.build_graph("tray", cache_dir=None)``), the library import-linter checks the
  contract with; an edge is one module importing another, at module level or inside a function;
- a cycle is a strongly connected set of two or more modules;
- the layer order is the ``layers`` contract of pyproject.toml in the working tree; a module of an
  older revision is placed where it lives in HEAD, following git's rename detection (``-M30%``);
  an import is upward when it goes to a higher layer, sideways when it goes to an independent sibling
  (``a | b``) of its own layer; the root package ``tray`` and unplaced modules count in neither;
- ``import tray.gateway.app`` is measured twice: the tray modules grimp finds upstream of it (every
  import it could run), and the tray modules in ``sys.modules`` after importing it in a fresh
  interpreter (what it runs at import time).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections import Counter
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "c2a8ed0"  # main before the architecture work of the "one clear house" issue
PROBE = "tray.gateway.app"

# Runs inside the exported tree: prints the graph and what importing the probe module loads.
MEASURE = """
import json, subprocess, sys
import grimp
graph = grimp.build_graph("tray", cache_dir=None)
edges = sorted((m, n) for m in graph.modules for n in graph.find_modules_directly_imported_by(m))
probe = sys.argv[1]
upstream = sorted(graph.find_upstream_modules(probe)) if probe in graph.modules else None
show = "import json, sys, " + probe + "; print(json.dumps([m for m in sys.modules if m.split('.')[0] == 'tray']))"
loaded = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, check=False)
print(json.dumps({
    "modules": sorted(graph.modules),
    "edges": edges,
    "upstream": upstream,
    "loaded": json.loads(loaded.stdout) if loaded.returncode == 0 else None,
    "load_error": loaded.stderr.strip().splitlines()[-1:] if loaded.returncode else [],
}))
"""


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def module_name(path: str) -> str:
    """``tray/web/link.py`` -> ``tray.web.link``; a package's ``__init__.py`` is the package.

    >>> module_name("tray/web/link.py"), module_name("tray/core/__init__.py"), module_name("tray/__init__.py")
    ('tray.web.link', 'tray.core', 'tray')
    """
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def folder_of(module: str, packages: set[str]) -> str:
    """The folder of tray/ a module's file is in (``top`` for tray/ itself).

    >>> folder_of("tray.web.link", {"tray", "tray.web"}), folder_of("tray.web", {"tray", "tray.web"})
    ('web', 'web')
    >>> folder_of("tray.cli", {"tray"}), folder_of("tray", {"tray"})
    ('top', 'top')
    """
    directory = module if module in packages else module.rpartition(".")[0]
    return directory.partition(".")[2] or "top"


def read_layers() -> list[list[str]]:
    """The ``layers`` contract of pyproject.toml, top layer first, each as its independent siblings."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c.get("type") == "layers")
    return [[name.strip() for name in layer.split("|")] for layer in contract["layers"]]


def place(module: str, layers: list[list[str]]) -> tuple[int, str] | None:
    """(layer index, sibling) of ``module``, None when no layer holds it.

    >>> place("tray.web.link", [["tray.cli"], ["tray.gateway", "tray.web"]])
    (1, 'tray.web')
    >>> place("tray", [["tray.cli"]]) is None
    True
    """
    for index, siblings in enumerate(layers):
        for sibling in siblings:
            if module == sibling or module.startswith(sibling + "."):
                return index, sibling
    return None


def renamed_since(rev: str) -> dict[str, str]:
    """Module names at ``rev`` -> their names in HEAD, where git sees a move."""
    moves = {}
    for line in git("diff", "--name-status", "-M30%", rev, "HEAD", "--", "tray").splitlines():
        status, *paths = line.split("\t")
        if status.startswith("R") and all(p.endswith(".py") for p in paths):
            moves[module_name(paths[0])] = module_name(paths[1])
    return moves


def strongly_connected(nodes: list[str], edges: list[tuple[str, str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with two or more members (the import cycles).

    >>> strongly_connected(["a", "b", "c"], [("a", "b"), ("b", "a"), ("b", "c")])
    [['a', 'b']]
    """
    targets: dict[str, list[str]] = {node: [] for node in nodes}
    for source, target in edges:
        targets[source].append(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in targets[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(1000, 4 * len(nodes)))
    for node in nodes:
        if node not in index:
            visit(node)
    return sorted(found)


@dataclass(frozen=True)
class Figures:
    revision: str
    modules: int
    per_folder: dict[str, int]
    edges: int
    cycles: list[list[str]]
    upward: list[str]
    sideways: list[str]
    unplaced: list[str]
    probe_upstream: int | None  # tray modules grimp finds upstream of PROBE
    probe_loaded: int | None  # tray modules in sys.modules after importing PROBE
    probe_load_error: list[str]


def measure(rev: str, layers: list[list[str]]) -> Figures:
    commit = git("rev-parse", "--short", rev).strip()
    archive = subprocess.run(["git", "archive", rev, "tray"], cwd=ROOT, capture_output=True, check=True).stdout
    with tempfile.TemporaryDirectory(prefix="import-graph-") as tree:
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(tree, filter="data")
        done = subprocess.run(
            [sys.executable, "-c", MEASURE, PROBE],
            cwd=tree,
            env={"PYTHONPATH": tree, "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
            capture_output=True,
            text=True,
            check=True,
        )
        packages = {module_name(str(p.relative_to(tree))) for p in Path(tree).rglob("__init__.py")}
    graph = json.loads(done.stdout)
    modules: list[str] = graph["modules"]
    edges = [(source, target) for source, target in graph["edges"]]
    moves = renamed_since(rev)
    placed = {m: place(moves.get(m, m), layers) for m in modules}
    upward, sideways = [], []
    for source, target in edges:
        a, b = placed[source], placed[target]
        if a is None or b is None:
            continue
        if b[0] < a[0]:
            upward.append(f"{source} -> {target}")
        elif b[0] == a[0] and b[1] != a[1]:
            sideways.append(f"{source} -> {target}")
    folders = Counter(folder_of(m, packages) for m in modules)
    return Figures(
        revision=commit,
        modules=len(modules),
        per_folder=dict(sorted(folders.items(), key=lambda item: (-item[1], item[0]))),
        edges=len(edges),
        cycles=strongly_connected(modules, edges),
        upward=upward,
        sideways=sideways,
        unplaced=sorted(m for m, where in placed.items() if where is None and m != "tray"),
        probe_upstream=len(graph["upstream"]) if graph["upstream"] is not None else None,
        probe_loaded=len(graph["loaded"]) if graph["loaded"] is not None else None,
        probe_load_error=graph["load_error"],
    )


def report(figures: Figures) -> str:
    lines = [
        f"== {figures.revision}",
        f"modules: {figures.modules}  (" + ", ".join(f"{name} {n}" for name, n in figures.per_folder.items()) + ")",
        f"import edges: {figures.edges}",
        f"cycles: {len(figures.cycles)}" + "".join(f"\n  {len(c)} modules: {', '.join(c)}" for c in figures.cycles),
        f"upward imports: {len(figures.upward)}  sideways: {len(figures.sideways)}",
        *(f"  up    {edge}" for edge in figures.upward),
        *(f"  side  {edge}" for edge in figures.sideways),
        f"import {PROBE}: {figures.probe_upstream} tray modules upstream (grimp), "
        f"{figures.probe_loaded} in sys.modules after importing it",
    ]
    if figures.unplaced:
        lines.append(f"not in any layer: {', '.join(figures.unplaced)}")
    if figures.probe_load_error:
        lines.append(f"importing {PROBE} failed: {figures.probe_load_error[0]}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="*", default=[BEFORE, "HEAD"], help="git revisions, oldest first")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    layers = read_layers()
    results = [measure(rev, layers) for rev in args.revisions]
    if args.json:
        print(json.dumps([asdict(figures) for figures in results], indent=2))
    else:
        print("layers (top first): " + " > ".join(" | ".join(siblings) for siblings in layers))
        print("\n\n".join(report(figures) for figures in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
