"""Build hook of the rcknn package: generates the gRPC stubs from the repository's proto/ with the
system protoc and grpc_python_plugin (Debian: protobuf-compiler, protobuf-compiler-grpc) into
the build tree, as the package rcknn.v1. Nothing generated is kept in the source tree."""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTO = "rcknn/v1/rcknn.proto"


def _tool(name):
    path = shutil.which(name) or os.path.join("/usr/bin", name)
    if not os.path.exists(path):
        raise RuntimeError(f"{name} not found: install protobuf-compiler and "
                           "protobuf-compiler-grpc (deploy/install_deps.sh)")
    return path


class BuildWithStubs(build_py):
    """build_py, then protoc writes rcknn/v1/rcknn_pb2.py and rcknn_pb2_grpc.py next to the
    package's modules in the build directory."""

    def run(self):
        super().run()
        if not os.path.exists(os.path.join(PROTO_DIR, PROTO)):
            raise RuntimeError(f"{os.path.join(PROTO_DIR, PROTO)} not found: build the package "
                               "from the rcknn repository (client/python)")
        out = self.build_lib
        os.makedirs(os.path.join(out, "rcknn", "v1"), exist_ok=True)
        subprocess.run(
            [_tool("protoc"), f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}",
             f"--plugin=protoc-gen-grpc_python={_tool('grpc_python_plugin')}", PROTO],
            check=True)
        with open(os.path.join(out, "rcknn", "v1", "__init__.py"), "w") as f:
            f.write(f"# Generated at build time from {PROTO}.\n")


setup(cmdclass={"build_py": BuildWithStubs})
