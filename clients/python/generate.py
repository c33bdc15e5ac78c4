#!/usr/bin/env python3
"""Generates the protobuf and gRPC modules of highwater_client from the repository's proto/ folder.

    python generate.py

The output goes to highwater_client/_proto/highwater/v1/ (ignored by git: run this again after
any change to the protos). grpcio-tools writes absolute imports such as
`from highwater.v1 import event_store_pb2`, which only work with the output folder on sys.path;
they are rewritten here into relative imports so the modules work inside the package.
"""

import pathlib
import re
import shutil
import sys

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
OUT = HERE / "highwater_client" / "_proto"


def main() -> int:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("highwater/v1/*.proto"))
    if not protos:
        print(f"no .proto files under {PROTO_ROOT}/highwater/v1", file=sys.stderr)
        return 1

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    # The well-known types (google/protobuf/*.proto) ship inside grpc_tools.
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        *protos,
    ]
    if protoc.main(args) != 0:
        print("protoc failed", file=sys.stderr)
        return 1

    # Make every generated folder a package, and the cross-file imports relative.
    for folder in [OUT, *(p for p in OUT.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    for module in OUT.rglob("*.py*"):
        text = module.read_text()
        fixed = re.sub(r"^from highwater\.v1 import ", "from . import ", text, flags=re.M)
        if fixed != text:
            module.write_text(fixed)

    print(f"generated {len(protos)} protos into {OUT.relative_to(HERE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
