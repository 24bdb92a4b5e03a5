"""Pure modules must not reach for the network, the filesystem, the clock, an event loop, the wire format
or a process group. A module is pure when its docstring says so ("Pure", "No I/O"), or its package's does;
the list below must keep holding the ones we rely on, so a docstring edit cannot drop them silently."""

import ast
import importlib
import inspect
import pkgutil
import re

import pytest

import dvla

# asyncio: the control plane's domain is called from the server's loop but never waits itself;
# google: protobuf belongs to dvla.rpc's codecs
FORBIDDEN = {"grpc", "socket", "os", "pathlib", "time", "requests", "asyncio", "google", "subprocess"}
FORBIDDEN_DVLA = {"dvla.proto", "dvla.rpc", "dvla.dataplane", "dvla.membership", "dvla.launch", "torch.distributed"}
CLAIM = re.compile(r"\bPure\b|\bNo I/O\b|\bno I/O\b")
MUST_BE_PURE = {
    "dvla.algo.advantages",
    "dvla.algo.losses",
    "dvla.algo.staleness",
    "dvla.algo.batching",
    "dvla.algo.learner",
    "dvla.algo.algorithms",
    "dvla.control.store",
    "dvla.control.registry",
    "dvla.control.run",
    "dvla.control.errors",
    "dvla.lanes.recorder",
    "dvla.weights",
    "dvla.autoplace",
    "dvla.scaling",
    "dvla.placement",
    "dvla.types",
}


def pure_modules() -> list[str]:
    found = set()
    for info in pkgutil.walk_packages(dvla.__path__, "dvla."):
        if info.name.startswith("dvla.proto"):
            continue
        doc = importlib.import_module(info.name).__doc__ or ""
        package_doc = importlib.import_module(info.name.rpartition(".")[0]).__doc__ or ""
        if CLAIM.search(doc.split("\n\n")[0]) or (not info.ispkg and CLAIM.search(package_doc.split("\n\n")[0])):
            found.add(info.name)
    return sorted(found | MUST_BE_PURE)


def imported_modules(module_name: str) -> set[str]:
    module = importlib.import_module(module_name)
    tree = ast.parse(inspect.getsource(module))
    package = module.__name__ if hasattr(module, "__path__") else module.__name__.rpartition(".")[0]
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.ImportFrom):  # relative: resolve against the package
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            modules.add(f"{base}.{node.module}" if node.module else base)
    return modules


def test_the_claims_are_found():
    assert MUST_BE_PURE <= set(pure_modules())


@pytest.mark.parametrize("module_name", pure_modules())
def test_pure_module_imports(module_name):
    modules = imported_modules(module_name)
    assert {m.split(".")[0] for m in modules} & FORBIDDEN == set()
    bad = {m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_DVLA)}
    assert bad == set(), f"{module_name} imports {sorted(bad)}"


LANES = sorted(
    info.name for info in pkgutil.iter_modules(importlib.import_module("dvla.lanes").__path__, "dvla.lanes.")
)
OFF_LIMITS_FOR_LANES = {"grpc", "services", "dvla.rpc", "dvla.proto", "dvla.dataplane", "dvla.membership",
                        "dvla.launch", "dvla.control", "torch.distributed"}  # fmt: skip


@pytest.mark.parametrize("module_name", [*LANES, "dvla.ports"])
def test_lanes_depend_on_ports_not_on_a_transport(module_name):
    """A lane runs over real or in-memory ports alike: it never reaches for gRPC, a process group or a service."""
    modules = imported_modules(module_name)
    bad = {m for m in modules if any(m == f or m.startswith(f + ".") for f in OFF_LIMITS_FOR_LANES)}
    assert bad == set(), f"{module_name} imports {sorted(bad)}"
