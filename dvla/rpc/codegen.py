"""Generate the Python modules (and .pyi stubs) from protos/ into dvla/proto/.

    python -m dvla.rpc.codegen          # regenerate in place
    python -m dvla.rpc.codegen --check  # exit 1 if the committed code is stale

The generated code is committed so that installing dvla needs no protoc; a test
runs --check so a .proto edit without regeneration fails CI.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"
OUT_PKG = "dvla/proto/v1"


def generate(out_root: Path) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc  # dev dependency only

    protos = sorted(PROTO_ROOT.glob(f"{OUT_PKG}/*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files under {PROTO_ROOT / OUT_PKG}")
    include = Path(grpc_tools.__file__).parent / "_proto"
    bindir = Path(sys.executable).parent  # the mypy plugins live beside this python
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    out_dir = out_root / OUT_PKG
    for pkg in (out_root / "dvla", out_root / "dvla/proto", out_dir):
        (pkg / "__init__.py").touch()
    return sorted(p for p in out_dir.iterdir() if p.suffix in (".py", ".pyi"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    target = ROOT / OUT_PKG
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        stale = []
        for f in files:
            dst = target / f.name
            if not dst.exists() or not filecmp.cmp(f, dst, shallow=False):
                stale.append(f.name)
                if not args.check:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(f, dst)
        extra = [p.name for p in target.glob("*_pb2*.py*") if p.name not in {f.name for f in files}]
    if args.check:
        if stale or extra:
            print(
                f"generated code is stale: {', '.join(stale + extra)}; run python -m dvla.rpc.codegen", file=sys.stderr
            )
            return 1
        print("generated code is up to date")
        return 0
    for name in extra:
        (target / name).unlink()
    print(f"wrote {len(stale)} file(s) to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
