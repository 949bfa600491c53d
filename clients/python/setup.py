"""Builds the gRPC stubs from the project's proto/ into the package (the
`retina.v1` modules protoc names them by), never hand-edited: protoc with
grpc_python_plugin at build time. RETINA_PROTO_DIR overrides where proto/ is
(default: ../../proto from this file)."""
import glob
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.realpath(__file__))


def generate(out_dir):
    proto_dir = os.environ.get("RETINA_PROTO_DIR", os.path.join(HERE, "..", "..", "proto"))
    protos = sorted(glob.glob(os.path.join(proto_dir, "retina", "v1", "*.proto")))
    if not protos:
        raise SystemExit(f"retina-client: no .proto files under {proto_dir}/retina/v1 (set RETINA_PROTO_DIR)")
    protoc = shutil.which("protoc")
    plugin = shutil.which("grpc_python_plugin")
    if not protoc or not plugin:
        raise SystemExit("retina-client: protoc and grpc_python_plugin are needed to build the stubs "
                         "(Debian: apt install protobuf-compiler protobuf-compiler-grpc)")
    os.makedirs(out_dir, exist_ok=True)
    subprocess.check_call([protoc, f"--proto_path={proto_dir}", f"--python_out={out_dir}", f"--grpc_out={out_dir}",
                           f"--plugin=protoc-gen-grpc={plugin}", *protos])
    for pkg in (os.path.join(out_dir, "retina"), os.path.join(out_dir, "retina", "v1")):
        open(os.path.join(pkg, "__init__.py"), "a").close()


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        generate(self.build_lib)


setup(packages=["retina_client"], cmdclass={"build_py": BuildWithStubs})
