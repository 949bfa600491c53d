#!/usr/bin/env python3
"""Every #include stays within the layering the build declares.

BUILD/layering.json (written by the top-level CMakeLists.txt) lists each
library and program of the project with its sources and its direct links. A
library owns the folders of its sources; a file may include headers of its own
library's folders, and of the project libraries it links, directly or
transitively. On top, docs/ARCHITECTURE.md's rules on outside libraries:
common/ uses neither libtorch nor gRPC, trainer/ never gRPC, services/ never
libtorch except the model server (services/serve/), which reaches the trainer
only through trainer/serving/; the study controller (services/study/) reaches the coordinator only
through its facade. Fails listing every file:line that breaks a rule.

    layering_test.py BUILD_DIR SOURCE_DIR
"""
import json
import pathlib
import re
import sys

build, source = pathlib.Path(sys.argv[1]).resolve(), pathlib.Path(sys.argv[2]).resolve()
layers = {k: v for k, v in json.loads((build / "layering.json").read_text()).items() if k}

owned = {}   # folder (relative to the source tree) -> library
files = {}   # library -> its source files (headers found beside them too)
for lib, info in layers.items():
    base = pathlib.Path(info["dir"])
    for src in filter(None, info["sources"].split(";")):
        p = (base / src).resolve()
        if source not in p.parents or build in p.parents or p == build or not p.exists():
            continue  # generated (protobuf, the precompiled header)
        files.setdefault(lib, set()).add(p)
        if not lib.startswith("retina-") and lib != "retina":  # a program owns no folder
            owned.setdefault(str(p.parent.relative_to(source)), lib)
owned["retina/v1"] = "retina_proto"  # generated headers

def closure(lib, seen=None):
    seen = set() if seen is None else seen
    for dep in filter(None, layers.get(lib, {}).get("links", "").split(";")):
        if dep in layers and dep not in seen:
            seen.add(dep)
            closure(dep, seen)
    return seen

# Headers live beside the sources of their library.
for lib in list(files):
    for p in list(files[lib]):
        for h in p.parent.glob("*.h"):
            if owned.get(str(h.parent.relative_to(source))) == lib:
                files[lib].add(h)

outside = [  # (folder prefix, pattern of a forbidden include, why)
    ("common/", r"<(torch|ATen|c10)/|grpcpp|\"retina/v1/", "common/ uses neither libtorch nor gRPC"),
    ("trainer/", r"grpcpp|\"retina/v1/|\"services/", "trainer/ never uses gRPC or the services"),
    ("services/", r"<(torch|ATen|c10)/|\"trainer/", "services/ never link libtorch (ranks are processes)",
     r"^services/serve/"),
    # The model server is the one service with libtorch: through its core's
    # facade (trainer/serving/), never the trainer's other parts or torch itself.
    ("services/serve/", r"<(torch|ATen|c10)/|\"trainer/(?!serving/)",
     "services/serve/ reaches the trainer only through trainer/serving/"),
    # The study controller is a client of the coordinator: its facade and
    # the job-spec rules, never the parts behind it (issue 30).
    ("services/study/", r"\"services/coordinator/(?!(coordinator|job_spec)\.h\")",
     "services/study/ drives jobs through the coordinator's facade (coordinator.h), never its parts"),
    # The coordinator's parts never reach into the study controller (its
    # program, coordinator_main.cc, wires the two together).
    ("services/coordinator/", r"\"services/study/", "the coordinator knows no study controller", r"_main\.cc$"),
]
include = re.compile(r'^\s*#\s*include\s+([<"][^>"]+[>"])', re.M)
errors, checked = [], 0
for lib, paths in sorted(files.items()):
    allowed = {lib} | closure(lib)
    for p in sorted(paths):
        rel = str(p.relative_to(source))
        text = p.read_text(errors="replace")
        for m in include.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            inc = m.group(1)
            checked += 1
            for prefix, pattern, why, *exempt in outside:
                if exempt and re.search(exempt[0], rel):
                    continue
                if rel.startswith(prefix) and re.search(pattern, inc):
                    errors.append(f"{rel}:{line}: {inc}: {why}")
            if not inc.startswith('"'):
                continue
            folder = str(pathlib.PurePosixPath(inc.strip('"')).parent)
            owner = owned.get(folder)
            if owner is None or owner in allowed:
                continue  # outside the project (absl/, nlohmann/, ...) or allowed
            errors.append(f"{rel}:{line}: {inc} is {owner}'s, which {lib} does not link")
for e in errors:
    print("layering:", e)
print(f"layering: {checked} includes in {sum(map(len, files.values()))} files of {len(files)} targets checked, "
      f"{len(errors)} outside the declared links")
sys.exit(1 if errors else 0)
