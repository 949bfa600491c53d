"""Runs the shell blocks of README.md and docs/*.md, as a user would.

  doctest.py BUILD_DIR SOURCE_DIR [FILE.md ...]

Every ```sh / ```bash block must be marked on the line before it:
  <!-- doctest: run -->               executed here, must exit 0
  <!-- doctest: skip: REASON -->      not executed (a cluster, a root install,
                                      real data); the reason is printed
An unmarked block fails the test, so no new command goes untested silently.

A `run` block runs with bash -euo pipefail in a fresh sandbox holding:
  docs/ configs/ deploy/ scripts/ clients/ proto/ -> the source tree, build/ -> BUILD_DIR,
  PATH with build/trainer, build/services and the tests' python3 first,
  fixtures the docs name: job.yaml (a tiny pre-training on dataset `em`),
  volume.tif / truth.tif, volume.nii.gz / truth.nii.gz (synthetic, 3 classes),
  STORE/ (also $STORE) with a fine-tuned tiny job `ft`, and data/cem500k,
  data/urocell (synthetic stand-ins for the real data sets).
Substitutions, the only changes made to a block: "/data/" and "/tmp/" name
the sandbox's data/ and tmp/; port 50051 a free port. Background jobs are
killed when the block ends. Prints one line per block and a summary.
"""
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

MARK = re.compile(r"^<!-- doctest: (run|skip: .+) -->$")


def blocks(path):
    lines = open(path).read().split("\n")
    i = 0
    while i < len(lines):
        if lines[i].strip() in ("```sh", "```bash"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            m = MARK.match(lines[k].strip()) if k >= 0 else None
            yield i + 1, (m.group(1) if m else None), "\n".join(lines[i + 1:j])
            i = j + 1
        elif lines[i].startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            i = j + 1
        else:
            i += 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(cmd, cwd, env, log):
    with open(log, "a") as f:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=cwd, env=env, stdout=f,
                              stderr=subprocess.STDOUT).returncode


def make_fixtures(fix, build, env):
    """Built once, copied into each sandbox."""
    log = os.path.join(fix, "..", "fixtures.log")
    steps = [
        "retina-synth images --out data/cem500k --count 16 --size 256",
        "retina-synth benchmark --out data/urocell --train 1 --test 1 --shape 16,64,64 --classes 3 --seed 3",
        "retina-synth benchmark --out bench --train 1 --test 1 --shape 12,64,64 --classes 3 --seed 4",
        "cp bench/test/images/vol0.tif volume.tif && cp bench/test/masks/vol0.tif truth.tif",
        f"{sys.executable} -c \"import nibabel, numpy, tifffile; "
        "[nibabel.save(nibabel.Nifti1Image(numpy.ascontiguousarray(tifffile.imread(a).transpose(2, 1, 0)), numpy.eye(4)), b) "
        "for a, b in (('volume.tif', 'volume.nii.gz'), ('truth.tif', 'truth.nii.gz'))]\"",
        "retina-shard import --kind folder --labels index --classes 3 --input bench --out STORE/datasets/mito --size 64",
        "printf 'kind: finetune\\nmodel: {name: tiny, image_size: 64, classes: 3}\\ndata: {dataset: mito, loader_threads: 1}\\n"
        "finetune: {iters: 4, global_batch: 2, save_every_iters: 4}\\n' > ft.yaml",
        "retina-train run --config ft.yaml --store STORE --job ft && rm ft.yaml",
        "printf 'kind: pretrain\\nmodel: {name: tiny, image_size: 64}\\ndata: {dataset: em, loader_threads: 1}\\n"
        "pretrain: {epochs: 1, global_batch: 32}\\n' > job.yaml",
        "rm -rf bench",
    ]
    for s in steps:
        if sh(s, fix, env, log) != 0:
            sys.exit(f"fixture step failed: {s}\n" + open(log).read()[-3000:])


def main():
    build, source = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    files = sys.argv[3:] or [os.path.join(source, "README.md")] + sorted(glob.glob(os.path.join(source, "docs", "*.md")))
    root = tempfile.mkdtemp(prefix="doctest-")
    # `python3` in a block is the interpreter the tests use (Debian's, with
    # its python3-* packages), as on the machines the docs are written for.
    pybin = os.path.join(root, "bin")
    os.makedirs(pybin)
    os.symlink(sys.executable, os.path.join(pybin, "python3"))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PATH=f"{build}/trainer:{build}/services:{pybin}:" + os.environ.get("PATH", ""))
    env.pop("RETINA_STORE", None)
    env.pop("RETINA_ADDRESS", None)
    passed = failed = skipped = 0
    try:
        fix = os.path.join(root, "fixtures")
        os.makedirs(fix)
        make_fixtures(fix, build, env)
        for path in files:
            rel = os.path.relpath(path, source)
            for line, mark, text in blocks(path):
                where = f"{rel}:{line}"
                if mark is None:
                    print(f"FAIL {where}: a shell block without a <!-- doctest: run|skip: reason --> marker")
                    failed += 1
                    continue
                if mark.startswith("skip"):
                    print(f"skip {where}: {mark[6:]}")
                    skipped += 1
                    continue
                box = os.path.join(root, f"box-{passed + failed}")
                shutil.copytree(fix, box, symlinks=True)
                for d in ("docs", "configs", "deploy", "scripts", "clients", "proto"):
                    os.symlink(os.path.join(source, d), os.path.join(box, d))
                os.symlink(build, os.path.join(box, "build"))
                os.makedirs(os.path.join(box, "tmp"))
                port = free_port()
                cmd = re.sub(r"(?<![\w.])/(data|tmp)/", lambda m: f"{box}/{m.group(1)}/", text).replace("50051", str(port))
                benv = dict(env, STORE=os.path.join(box, "STORE"))
                log = os.path.join(box, "block.log")
                t0 = time.time()
                proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", cmd], cwd=box, env=benv,
                                        stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
                try:
                    rc = proc.wait(timeout=300)
                except subprocess.TimeoutExpired:
                    rc = "timeout (300 s)"
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # whatever the block left in the background
                except ProcessLookupError:
                    pass
                if rc == 0:
                    print(f"ok   {where} ({time.time() - t0:.1f} s)")
                    passed += 1
                else:
                    print(f"FAIL {where}: exit {rc}\n--- block\n{cmd}\n--- output (tail)\n{open(log).read()[-4000:]}")
                    failed += 1
        print(f"{passed} passed, {failed} failed, {skipped} skipped")
        return 1 if failed else 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
