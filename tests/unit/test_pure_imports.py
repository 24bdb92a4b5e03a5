"""Pure modules must not reach for the network, the filesystem or the clock."""
import ast
import importlib
import inspect

import pytest

FORBIDDEN = {"grpc", "socket", "os", "pathlib", "time", "requests"}


def imported_roots(module_name: str) -> set[str]:
    tree = ast.parse(inspect.getsource(importlib.import_module(module_name)))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("module_name", ["dvla.algo.advantages", "dvla.algo.losses"])
def test_pure_module_imports(module_name):
    assert imported_roots(module_name) & FORBIDDEN == set()
