"""The architecture's direction, checked on every run: tasks -> core -> config -> contract.

The contracts themselves are import-linter's, in pyproject.toml; this module runs them, and
adds what import-linter has no contract for: no module imports itself in a cycle, and no test
module imports another.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import grimp

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("userpath_worker", "tasks", "config", "userpath_client")


def test_the_import_contracts_hold() -> None:
    linter = pathlib.Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(linter), "--no-cache"], cwd=REPOSITORY, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_module_is_part_of_an_import_cycle() -> None:
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    cycles = [sorted(component) for component in _strongly_connected(graph) if len(component) > 1]
    assert cycles == []


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in tests/common/ and fixtures in conftest.py, where one can find them."""
    graph = grimp.build_graph("tests", exclude_type_checking_imports=True)
    imports = [
        (importer, imported)
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if imported.rpartition(".")[2].startswith("test_")
    ]
    assert imports == []


def _strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Tarjan's algorithm, iterative, over the modules of our packages."""
    modules = sorted(graph.modules)
    ours = set(modules)
    edges = {module: sorted(graph.find_modules_directly_imported_by(module) & ours) for module in modules}
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = lowest[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, successors = work[-1]
            successor = next(successors, None)
            if successor is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    lowest[parent] = min(lowest[parent], lowest[module])
                if lowest[module] == index[module]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == module:
                            break
                    components.append(component)
            elif successor not in index:
                index[successor] = lowest[successor] = len(index)
                stack.append(successor)
                on_stack.add(successor)
                work.append((successor, iter(edges[successor])))
            elif successor in on_stack:
                lowest[module] = min(lowest[module], index[successor])
    return components


def test_no_tracked_file_holds_a_merge_conflict_marker() -> None:
    """Seen: a merge landed with its conflict markers in the README's CLI table and a docstring."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPOSITORY, capture_output=True, check=True).stdout
    marked = []
    for name in tracked.decode().split("\0"):
        path = REPOSITORY / name
        if not name or not path.is_file():
            continue
        lines = path.read_bytes().splitlines()
        if any(line.startswith((b"<<<<<<< ", b">>>>>>> ")) for line in lines) and b"=======" in lines:
            marked.append(name)
    assert marked == []
