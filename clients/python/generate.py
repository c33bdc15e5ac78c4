#!/usr/bin/env python3
"""Generates the protobuf and gRPC modules of highwater_client from the repository's proto/ folder.

    python generate.py           # writes highwater_client/_proto
    python generate.py --check   # fails if highwater_client/_proto is not what it would write

The output goes to highwater_client/_proto/highwater/v1/ and is committed, so that the package
installs with plain `pip install` (from this folder, an sdist or a wheel) with no generation
step; run this again after any change to the protos, and CI (run-tests.sh) checks it is current.
grpcio-tools writes absolute imports such as
`from highwater.v1 import event_store_pb2`, which only work with the output folder on sys.path;
they are rewritten here into relative imports so the modules work inside the package.
"""

import filecmp
import pathlib
import re
import shutil
import sys
import tempfile

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
OUT = HERE / "highwater_client" / "_proto"


def generate(out: pathlib.Path) -> int:
    """Writes the modules into `out` (emptied first); the number of protos, or 0 on failure."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("highwater/v1/*.proto"))
    if not protos:
        print(f"no .proto files under {PROTO_ROOT}/highwater/v1", file=sys.stderr)
        return 0

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    # The well-known types (google/protobuf/*.proto) ship inside grpc_tools.
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        print("protoc failed", file=sys.stderr)
        return 0

    # Make every generated folder a package, and the cross-file imports relative.
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    for module in out.rglob("*.py*"):
        text = module.read_text()
        fixed = re.sub(r"^from highwater\.v1 import ", "from . import ", text, flags=re.M)
        if fixed != text:
            module.write_text(fixed)
    return len(protos)


def differences(left: pathlib.Path, right: pathlib.Path) -> list:
    """Files that differ between two trees, or are in one only (caches ignored)."""
    compared = filecmp.dircmp(left, right, ignore=["__pycache__"])
    found = [*compared.left_only, *compared.right_only, *compared.diff_files]
    for name in compared.common_dirs:
        found += [f"{name}/{f}" for f in differences(left / name, right / name)]
    return found


def main() -> int:
    if sys.argv[1:] == ["--check"]:
        with tempfile.TemporaryDirectory() as scratch:
            fresh = pathlib.Path(scratch) / "_proto"
            if not generate(fresh):
                return 1
            stale = differences(fresh, OUT) if OUT.is_dir() else ["(missing)"]
        if stale:
            print(f"{OUT.relative_to(HERE)} is not current ({', '.join(stale)}): run generate.py", file=sys.stderr)
            return 1
        print(f"{OUT.relative_to(HERE)} is current")
        return 0
    if sys.argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    count = generate(OUT)
    if not count:
        return 1
    print(f"generated {count} protos into {OUT.relative_to(HERE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
