"""The Python client (clients/python, docs/python.md) against a real
coordinator and worker on loopback:

  python_client_test.py BUILD_DIR SOURCE_DIR

1. installs it as a user would, without network: a venv with the system's
   packages (Debian's python3-grpcio, python3-protobuf, python3-yaml) and
   `pip install --no-build-isolation --no-index ./clients/python`, which
   generates the stubs from proto/ (protoc, grpc_python_plugin);
2. starts retina-coordinator (client tokens for alice and bob) and one
   retina-worker, with synthetic data in the store;
3. runs this file's scenario in the venv's python: errors carrying code and
   field, submit / watch / metrics / logs / cancel, the registry, predict and
   a study's report.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def scenario(work):
    """Runs in the venv: only the installed package and the system's modules."""
    import subprocess

    import grpc
    import retina_client
    from retina_client import Client, InvalidArgument, NotFound, PermissionDenied

    where = os.path.dirname(retina_client.__file__)
    if "site-packages" not in where:
        fail(f"retina_client imported from {where}, not from the installed package")
    alice = Client(os.environ["RETINA_ADDRESS"], token_file=os.path.join(work, "alice.token"))
    bob = Client(os.environ["RETINA_ADDRESS"], token=open(os.path.join(work, "bob.token")).read().strip())

    # Errors: the gRPC code and the field the service named.
    try:
        alice.submit({"kind": "pretrain", "model": {"name": "tiny"}, "optimiser": {"lr": 1}})
        fail("a misspelt key was accepted")
    except InvalidArgument as e:
        assert e.code == grpc.StatusCode.INVALID_ARGUMENT, e.code
        assert e.field == "spec.config_yaml", (e.field, e.message)
        assert e.key == "optimiser" and e.line == 4, (e.key, e.line, e.message)
    try:
        alice.job("job-999999")
        fail("an unknown job was found")
    except NotFound as e:
        assert e.code == grpc.StatusCode.NOT_FOUND
    try:
        Client(os.environ["RETINA_ADDRESS"], token="not-a-token").jobs()
        fail("a bad token was accepted")
    except retina_client.Unauthenticated as e:
        assert e.code == grpc.StatusCode.UNAUTHENTICATED

    # Submit a job file with overrides, watch it, read its metrics and logs.
    pre = alice.submit(os.path.join(work, "pretrain.yaml"), set={"pretrain.epochs": 2}, max_restarts=0)
    events = list(pre.watch())
    assert events[0].type == "SNAPSHOT", events[0]
    assert any(e.type == "PROGRESS" for e in events), events
    assert events[-1].state == "SUCCEEDED", (events[-1], pre.refresh().info.message)
    rows = pre.metrics()
    assert isinstance(rows, list) or type(rows).__name__ == "DataFrame", type(rows)
    rows = pre.metrics(as_frame=False)
    assert [r["step"] for r in rows] == [1, 2, 3, 4], rows
    assert all(r["loss"] > 0 and r["val_iou"] is None for r in rows), rows
    assert "step" in pre.logs(rank=0), pre.logs()
    print(f"ok: {pre.id} watched ({len(events)} events), {len(rows)} metric rows, logs read")

    # Another user's job: its metrics are the owner's.
    try:
        bob.job(pre.id).metrics()
        fail("bob read alice's metrics")
    except PermissionDenied:
        pass

    # Cancel.
    long = alice.submit(os.path.join(work, "pretrain.yaml"), set={"pretrain.epochs": 1000})
    long.cancel()
    assert long.wait() == "CANCELLED", long.info
    print(f"ok: {long.id} cancelled")

    # The registry: a fine-tune that registers itself, then tag, list, lineage.
    ft = alice.submit({"kind": "finetune", "model": {"name": "tiny", "image_size": 64, "classes": 1},
                       "data": {"dataset": "mito", "loader_threads": 1},
                       "finetune": {"iters": 4, "global_batch": 4, "init": "jobs/" + pre.id, "register": "py-net"}})
    assert ft.wait() == "SUCCEEDED", ft.info.message
    for _ in range(200):
        if any(m["id"] == "py-net:v1" for m in alice.models.list()):
            break
        time.sleep(0.1)
    else:
        fail("py-net:v1 was never registered")
    try:
        alice.models.register(ft, "Bad Name")
        fail("a bad model name was accepted")
    except InvalidArgument as e:
        assert e.field == "name", (e.field, e.message)
    alice.models.tag("py-net:v1", "prod")
    model = alice.models.get("py-net@prod")
    assert model["id"] == "py-net:v1" and model["tags"] == ["prod"], model
    assert [s.get("job_id") for s in model["lineage"]] == [ft.id, pre.id], model["lineage"]
    assert "config_yaml" not in bob.models.get("py-net")["lineage"][0]  # the owner's only
    os.makedirs(os.path.join(os.environ["RETINA_STORE"], "exports"))  # the server reads weights only in the store
    package = alice.models.export("py-net@prod", os.path.join(os.environ["RETINA_STORE"], "exports", "py-net.zip"),
                                  store=os.environ["RETINA_STORE"],
                                  program=os.path.join(os.environ["RETINA_BUILD"], "trainer", "retina-export"))
    import zipfile
    with zipfile.ZipFile(package) as z:
        assert {"rdf.yaml", "weights.pt", "transunet.py", "lineage.json"} <= set(z.namelist()), z.namelist()
        assert json.loads(z.read("lineage.json"))["id"] == "py-net:v1"

    # The model server takes a model reference and a package as weights.
    from retina.v1 import prediction_service_pb2 as pred_pb
    from retina.v1 import prediction_service_pb2_grpc as pred_rpc
    ready = os.path.join(work, "serve.ready")
    server = subprocess.Popen([os.path.join(os.environ["RETINA_BUILD"], "services", "retina-serve"),
                               "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--threads", "1",
                               "--store", os.environ["RETINA_STORE"], "--ready-file", ready,
                               "--model", "ref=model:py-net@prod", "--model", "pkg=" + package],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "serve.log"), "w"))
    try:
        for _ in range(600):
            if os.path.exists(ready) or server.poll() is not None:
                break
            time.sleep(0.1)
        assert os.path.exists(ready), open(os.path.join(work, "serve.log")).read()[-2000:]
        port = json.load(open(ready))["grpc_port"]
        stub = pred_rpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        served = {m.name: m for m in stub.ListModels(pred_pb.ListModelsRequest(), timeout=30).models}
        assert set(served) == {"ref", "pkg"}, served
    finally:
        server.terminate()
        server.wait(timeout=60)
    print("ok: retina-serve loads model:py-net@prod and its BioImage.IO package")
    print(f"ok: py-net:v1 registered from {ft.id}, tagged, lineage {ft.id} <- {pre.id}")

    # predict: an infer job with the registered model.
    job = alice.predict("model:py-net@prod", os.path.join(os.environ["RETINA_STORE"], "inputs", "volume.tif"))
    assert job.wait() == "SUCCEEDED", job.info.message
    out = os.path.join(os.environ["RETINA_STORE"], "jobs", job.id, "predictions", "volume.ome.zarr")
    assert os.path.isdir(out), out
    print(f"ok: predict {job.id} wrote {out}")

    # A study and its report.
    study = alice.submit({"kind": "study", "model": {"name": "tiny", "image_size": 64, "classes": 1},
                          "data": {"dataset": "mito", "test_dataset": "mito-test", "loader_threads": 1},
                          "finetune": {"iters": 2, "global_batch": 2},
                          "evaluate": {"mode": "stack", "overlap": 0.25},
                          "study": {"inits": ["random", "model:py-net"], "init_names": ["random", "py-net"],
                                    "seeds": [0], "eval_at": [2]}})
    assert study.wait() == "SUCCEEDED", study.info.message
    report = alice.study(study.id).report()
    assert [a["name"] for a in report["arms"]] == ["random", "py-net"], report["arms"]
    assert len(alice.study(study.id).children()) == 2
    print(f"ok: study {study.id}: report with arms {[a['name'] for a in report['arms']]}")
    print("PASS")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--scenario":
        scenario(sys.argv[2])
        return
    build, source = (os.path.abspath(a) for a in sys.argv[1:3])
    work = tempfile.mkdtemp(prefix="retina-pyclient-")
    procs = []
    try:
        # 1. Install as a user would, offline, from a copy of the tree's
        #    clients/ and proto/ (pip builds in the folder it is given).
        tree = os.path.join(work, "src")
        for d in ("clients", "proto"):
            shutil.copytree(os.path.join(source, d), os.path.join(tree, d),
                            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        venv = os.path.join(work, "venv")
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
        pip = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "--no-build-isolation", "--no-index",
                              "--quiet", os.path.join(tree, "clients", "python")], capture_output=True, text=True)
        if pip.returncode != 0:
            fail("pip install ./clients/python: " + pip.stdout[-2000:] + pip.stderr[-2000:])
        print("ok: pip install --no-build-isolation --no-index ./clients/python")

        # 2. The service, with two users.
        store = os.path.join(work, "store")
        trainer, services = os.path.join(build, "trainer"), os.path.join(build, "services")
        run = lambda *a: subprocess.run(a, check=True, stdout=subprocess.DEVNULL)
        run(os.path.join(trainer, "retina-synth"), "images", "--out", os.path.join(work, "em"), "--count", "4",
            "--size", "128")
        run(os.path.join(trainer, "retina-shard"), "pack", "--input", os.path.join(work, "em"), "--out",
            os.path.join(store, "datasets", "em"), "--size", "64")
        run(os.path.join(trainer, "retina-synth"), "benchmark", "--out", os.path.join(work, "mito"), "--train", "1",
            "--test", "1", "--shape", "4,128,128", "--seed", "1")
        run(os.path.join(trainer, "retina-shard"), "import", "--kind", "folder", "--input",
            os.path.join(work, "mito"), "--out", os.path.join(store, "datasets", "mito"), "--size", "64")
        os.makedirs(os.path.join(store, "inputs"))
        images = os.path.join(work, "mito", "test", "images")
        shutil.copy(os.path.join(images, sorted(os.listdir(images))[0]), os.path.join(store, "inputs", "volume.tif"))
        with open(os.path.join(work, "pretrain.yaml"), "w") as f:
            f.write("kind: pretrain\nmodel: {name: tiny, image_size: 64}\ndata: {dataset: em, loader_threads: 1}\n"
                    "pretrain: {epochs: 1, global_batch: 8, checkpoint_every_epochs: 1}\n")
        for user in ("alice", "bob"):
            with open(os.path.join(work, user + ".token"), "w") as f:
                f.write(f"{user}-token-0123456789abcdef\n")
        with open(os.path.join(work, "clients"), "w") as f:
            f.write("alice-token-0123456789abcdef alice\nbob-token-0123456789abcdef bob\n")
        with open(os.path.join(work, "worker.token"), "w") as f:
            f.write("worker-token-0123456789abcdef\n")
        for p in ("clients", "worker.token"):
            os.chmod(os.path.join(work, p), 0o600)
        port = free_port()
        log = lambda name: open(os.path.join(work, name + ".log"), "w")
        procs.append(subprocess.Popen(
            [os.path.join(services, "retina-coordinator"), "--listen", f"127.0.0.1:{port}", "--metrics-listen",
             "127.0.0.1:0", "--db", os.path.join(work, "jobs.db"), "--store", store, "--heartbeat-s", "0.2",
             "--lease-s", "3", "--client-tokens", os.path.join(work, "clients"), "--worker-token",
             os.path.join(work, "worker.token"), "--ready-file", os.path.join(work, "coordinator.ready")],
            stdout=log("coordinator"), stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen(
            [os.path.join(services, "retina-worker"), "--coordinator", f"127.0.0.1:{port}", "--id", "w1", "--host",
             "127.0.0.1", "--cpu-slots", "2", "--gpus", "none", "--store", store, "--token-file",
             os.path.join(work, "worker.token"), "--trainer", os.path.join(trainer, "retina-train"),
             "--metrics-listen", "127.0.0.1:0", "--ready-file", os.path.join(work, "worker.ready")],
            stdout=log("worker"), stderr=subprocess.STDOUT))
        for _ in range(300):
            if all(os.path.exists(os.path.join(work, r)) for r in ("coordinator.ready", "worker.ready")):
                break
            time.sleep(0.1)
        else:
            fail("the coordinator or the worker did not start; see " + work)

        # 3. The scenario, in the venv.
        env = dict(os.environ, RETINA_ADDRESS=f"127.0.0.1:{port}", RETINA_STORE=store, RETINA_BUILD=build,
                   PYTHONDONTWRITEBYTECODE="1")
        env.pop("PYTHONPATH", None)
        r = subprocess.run([os.path.join(venv, "bin", "python"), os.path.abspath(__file__), "--scenario", work],
                           env=env, cwd=work)
        if r.returncode != 0:
            for name in ("coordinator", "worker"):
                print(f"--- {name}.log (tail)")
                print(open(os.path.join(work, name + ".log")).read()[-3000:])
            fail("the scenario failed")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
