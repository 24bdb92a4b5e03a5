"""Pure modules must not reach for the network, the filesystem, the clock, an event loop or the wire format."""

import ast
import importlib
import inspect

import pytest

# asyncio: the control plane's domain is called from the server's loop but never waits itself;
# google: protobuf belongs to dvla.rpc's codecs
FORBIDDEN = {"grpc", "socket", "os", "pathlib", "time", "requests", "asyncio", "google"}
FORBIDDEN_DVLA = {"dvla.proto", "dvla.rpc"}


def imported_modules(module_name: str) -> set[str]:
    tree = ast.parse(inspect.getsource(importlib.import_module(module_name)))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize(
    "module_name",
    [
        "dvla.algo.advantages",
        "dvla.algo.losses",
        "dvla.control.store",
        "dvla.control.registry",
        "dvla.control.run",
        "dvla.control.errors",
    ],
)
def test_pure_module_imports(module_name):
    modules = imported_modules(module_name)
    assert {m.split(".")[0] for m in modules} & FORBIDDEN == set()
    assert {".".join(m.split(".")[:2]) for m in modules} & FORBIDDEN_DVLA == set()
