"""Runs every job file we ship (configs/*.yaml, docs/examples/*.yaml) end to
end with retina-train (a study through a loopback coordinator and worker, with
`retina study submit`), as written, on tiny synthetic data.

Only model size, iterations/batch and loader threads are overridden, with the
documented `--set key=value`; dataset names, job chains (finetune.init:
jobs/pretrain-cem500k/checkpoints/LATEST, evaluate.checkpoint:
jobs/finetune-X/checkpoints/LATEST), modes, classes, class weights and
augmentation settings are the files' own. The store holds synthetic datasets
under the names the files use (made by retina-synth + retina-shard), and each
job's id is its file's stem, so the chains resolve exactly as on a cluster.

  run_job_files.py BUILD_DIR SOURCE_DIR
Exit 0 when every file ran; prints a line per file.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

import yaml  # python3-yaml


def run(cmd, log):
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1")).returncode


SERVICE = []


def service(build, store, tmp, log):
    """A coordinator and a 2-slot worker on loopback over `store` (started once)."""
    if not SERVICE:
        ready = [os.path.join(tmp, n) for n in ("coordinator.ready", "worker.ready")]
        out = open(log, "a")
        SERVICE.append(subprocess.Popen(
            [os.path.join(build, "services", "retina-coordinator"), "--listen", "127.0.0.1:0", "--metrics-listen",
             "127.0.0.1:0", "--db", os.path.join(tmp, "jobs.db"), "--store", store, "--ready-file", ready[0]],
            stdout=out, stderr=subprocess.STDOUT))
        while not os.path.exists(ready[0]):
            time.sleep(0.1)
        import json
        port = json.load(open(ready[0]))["grpc_port"]
        SERVICE.append(f"127.0.0.1:{port}")
        SERVICE.append(subprocess.Popen(
            [os.path.join(build, "services", "retina-worker"), "--coordinator", SERVICE[1], "--cpu-slots", "2",
             "--gpus", "none", "--store", store, "--trainer", os.path.join(build, "trainer", "retina-train"),
             "--metrics-listen", "127.0.0.1:0", "--ready-file", ready[1]], stdout=out, stderr=subprocess.STDOUT))
        while not os.path.exists(ready[1]):
            time.sleep(0.1)
    return SERVICE[1]


def main():
    build, source = sys.argv[1], sys.argv[2]
    train, synth, shard = (os.path.join(build, "trainer", p) for p in ("retina-train", "retina-synth", "retina-shard"))
    files = sorted(glob.glob(os.path.join(source, "configs", "*.yaml"))) + sorted(
        glob.glob(os.path.join(source, "docs", "examples", "*.yaml")))
    jobs = []
    for f in files:
        with open(f) as fh:
            doc = yaml.safe_load(fh)
        jobs.append((f, doc))
    tmp = tempfile.mkdtemp(prefix="job-files-")
    store, log = os.path.join(tmp, "store"), os.path.join(tmp, "run.log")
    ds = os.path.join(store, "datasets")
    try:
        # Synthetic data under the files' dataset names.
        def must(cmd):
            if run(cmd, log) != 0:
                sys.exit(f"setup failed: {' '.join(cmd)}\n" + open(log).read()[-4000:])
        must([synth, "images", "--out", f"{tmp}/em", "--count", "16", "--size", "128"])
        must([shard, "pack", "--input", f"{tmp}/em", "--out", f"{ds}/cem500k", "--size", "64"])
        must([synth, "benchmark", "--out", f"{tmp}/bin", "--train", "1", "--test", "1", "--shape", "4,96,96", "--seed", "1"])
        must([synth, "benchmark", "--out", f"{tmp}/multi", "--train", "1", "--test", "1", "--shape", "12,64,64",
              "--classes", "3", "--seed", "2"])
        needed = {d["data"]["dataset"] for _, d in jobs if d.get("kind") in ("finetune", "evaluate", "study")}
        for name in sorted(n for n in needed if not n.endswith("-test")):
            if name == "guay":
                must([shard, "import", "--kind", "folder", "--labels", "index", "--classes", "7", "--input",
                      f"{tmp}/multi", "--out", f"{ds}/guay", "--size", "64"])
            elif name == "urocell":
                must([shard, "import", "--kind", "folder", "--labels", "index", "--classes", "3", "--isotropic",
                      "--val-items", "4", "--input", f"{tmp}/multi", "--out", f"{ds}/urocell", "--size", "64"])
            else:
                must([shard, "import", "--kind", "folder", "--input", f"{tmp}/bin", "--out", f"{ds}/{name}", "--size", "64"])
        if any(d.get("kind") == "infer" for _, d in jobs):  # the volumes infer jobs name
            os.makedirs(os.path.join(store, "volumes", "urocell"), exist_ok=True)
            shutil.copy(f"{tmp}/multi/test/images/vol0.tif", os.path.join(store, "volumes", "urocell", "vol0.tif"))
        order = {"pretrain": 0, "finetune": 1, "evaluate": 2, "infer": 3, "study": 4}
        failures = 0
        jobs.sort(key=lambda fd: (order.get(fd[1].get("kind"), 3), "docs" in fd[0], fd[0]))
        for f, doc in jobs:
            kind = doc.get("kind")
            rel = os.path.relpath(f, source)
            job = os.path.splitext(os.path.basename(f))[0]
            if "docs/examples" in rel and os.path.exists(os.path.join(store, "jobs", job)):
                job = "docs-" + job  # the configs/ file of the same name ran already
            # (An infer job's model is its weights': nothing to shrink.)
            sets = [] if kind == "infer" else ["model.name=tiny", "model.image_size=64", "data.loader_threads=1"]
            if kind == "pretrain":
                sets += ["pretrain.epochs=1", "pretrain.global_batch=8", "pretrain.checkpoint_every_epochs=1"]
            elif kind == "finetune":
                sets += ["finetune.iters=2", "finetune.global_batch=2", "finetune.save_every_iters=2",
                         "finetune.eval_every_iters=2"]
            cmd = [train, "run", "--config", f, "--store", store, "--job", job]
            if kind == "study":  # a grid of fine-tunes: through the service, as users run it
                sets += ["finetune.iters=2", "finetune.global_batch=2", "study.eval_at=[2]", "study.seed_count=2"]
                cmd = [os.path.join(build, "services", "retina"), "--address", service(build, store, tmp, log),
                       "study", "submit", f, "--watch"]
            for s in sets:
                cmd += ["--set", s]
            t0 = time.time()
            rc = run(cmd, log)
            print(f"{'ok  ' if rc == 0 else 'FAIL'} {rel:45s} {kind:9s} job {job:28s} {time.time() - t0:5.1f} s", flush=True)
            if rc != 0:
                failures += 1
                print(open(log).read()[-3000:])
        print(f"{len(jobs) - failures} passed, {failures} failed")
        return 1 if failures else 0
    finally:
        for p in SERVICE:
            if isinstance(p, subprocess.Popen):
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
