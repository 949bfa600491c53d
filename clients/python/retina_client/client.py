"""Client, Job, Models and Study over the service's gRPC API (proto/retina/v1).

Where to connect, highest first: the arguments; RETINA_ADDRESS, RETINA_TOKEN
or RETINA_TOKEN_FILE, RETINA_CA; else 127.0.0.1:50051 in plaintext without a
token (as the `retina` CLI, docs/cli.md).
"""
import json
import os

import grpc
import yaml
from google.protobuf import json_format

from retina.v1 import job_service_pb2 as jobs_pb
from retina.v1 import job_service_pb2_grpc as jobs_rpc
from retina.v1 import model_service_pb2 as models_pb
from retina.v1 import model_service_pb2_grpc as models_rpc
from retina_client.errors import from_rpc_error

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def _dict(message):
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _set_key(config, dotted, value):
    node = config
    keys = dotted.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"set: {dotted}: {k} is not a section")
    node[keys[-1]] = value


class Event:
    """One WatchJob event: `type` (SNAPSHOT, STATE, PROGRESS, EVAL, CHECKPOINT,
    RESIZED, PREEMPTED), the job's `state`, `step`/`total_steps`, `loss`,
    `iou` (None without one), and `event`: the rank's event line as a dict."""

    def __init__(self, message):
        job = message.job
        self.type = jobs_pb.JobEvent.Type.Name(message.type)
        self.state = jobs_pb.JobState.Name(job.state)
        self.step = job.progress.step
        self.total_steps = job.progress.total_steps
        self.loss = job.progress.loss
        self.iou = job.progress.last_iou if job.progress.has_iou else None
        self.message = job.message
        self.event = json.loads(message.event_json) if message.event_json else None

    def __repr__(self):
        iou = "" if self.iou is None else f", iou {self.iou:.4f}"
        return f"Event({self.type}, {self.state}, step {self.step}/{self.total_steps}, loss {self.loss:.4f}{iou})"


class Job:
    """A job of the service. `info` is the last GetJob answer (retina.v1.Job)."""

    def __init__(self, client, info):
        self._c = client
        self.info = info

    @property
    def id(self):
        return self.info.id

    @property
    def state(self):
        return jobs_pb.JobState.Name(self.info.state)

    def refresh(self):
        self.info = self._c._call(self._c._jobs.GetJob, "GetJob", jobs_pb.GetJobRequest(id=self.id))
        return self

    def watch(self):
        """Progress events until the job ends (a generator; the first is a SNAPSHOT)."""
        stream = self._c._jobs.WatchJob(jobs_pb.WatchJobRequest(id=self.id), metadata=self._c._metadata)
        try:
            for message in stream:
                self.info = message.job
                yield Event(message)
        except grpc.RpcError as e:
            raise from_rpc_error(e, "WatchJob") from None

    def wait(self):
        """Blocks until the job ends; returns its final state."""
        for _ in self.watch():
            pass
        return self.refresh().state

    def cancel(self):
        self.info = self._c._call(self._c._jobs.CancelJob, "CancelJob", jobs_pb.CancelJobRequest(id=self.id))
        return self

    def metrics(self, as_frame=None):
        """The per-step series (metrics.csv): one row per step with step, epoch,
        loss, lr, images_per_s, data_wait_s, allreduce_s, val_iou (None where
        there is none) and time. A pandas DataFrame when pandas is installed
        (as_frame=None) or asked for (True); a list of dicts otherwise."""
        m = self._c._call(self._c._jobs.GetJobMetrics, "GetJobMetrics", jobs_pb.GetJobMetricsRequest(id=self.id))
        rows = [dict(step=p.step, epoch=p.epoch, loss=p.loss, lr=p.lr, images_per_s=p.images_per_s,
                     data_wait_s=p.data_wait_s, allreduce_s=p.allreduce_s,
                     val_iou=p.val_iou if p.has_val_iou else None, time=p.time_unix_s) for p in m.points]
        if as_frame is False:
            return rows
        try:
            import pandas
        except ImportError:
            if as_frame:
                raise
            return rows
        return pandas.DataFrame(rows, columns=["step", "epoch", "loss", "lr", "images_per_s", "data_wait_s",
                                               "allreduce_s", "val_iou", "time"])

    def evaluation(self):
        """An evaluation job's eval.json as a dict (None before it has one)."""
        m = self._c._call(self._c._jobs.GetJobMetrics, "GetJobMetrics", jobs_pb.GetJobMetricsRequest(id=self.id))
        return json.loads(m.eval_json) if m.eval_json else None

    def logs(self, rank=0, attempt=0):
        """A rank's log of an attempt (0: the current one), as text."""
        request = jobs_pb.ReadLogsRequest(id=self.id, rank=rank, attempt=attempt)
        try:
            chunks = [c.data for c in self._c._jobs.ReadLogs(request, metadata=self._c._metadata,
                                                               timeout=self._c.timeout)]
        except grpc.RpcError as e:
            raise from_rpc_error(e, "ReadLogs") from None
        return b"".join(chunks).decode("utf-8", "replace")

    def __repr__(self):
        return f"Job({self.id}, {self.state})"


class Models:
    """The model registry (docs/models.md). Versions come back as dicts
    (protobuf's JSON mapping with the proto's field names)."""

    def __init__(self, client):
        self._c = client

    def list(self, name=""):
        r = self._c._call(self._c._models.ListModels, "ListModels", models_pb.ListModelVersionsRequest(name=name))
        return [_dict(m) for m in r.models]

    def register(self, job, name, step=0, tags=(), description=""):
        job_id = job.id if isinstance(job, Job) else job
        r = models_pb.RegisterModelRequest(job_id=job_id, step=step, name=name, tags=list(tags),
                                           description=description)
        return _dict(self._c._call(self._c._models.RegisterModel, "RegisterModel", r, timeout=300))

    def import_package(self, package, name, tags=(), description=""):
        """Registers a BioImage.IO package (a .zip in the store, or under an
        allowed root) as a new version of `name` (docs/models.md)."""
        r = models_pb.RegisterModelRequest(package=package, name=name, tags=list(tags), description=description)
        return _dict(self._c._call(self._c._models.RegisterModel, "RegisterModel", r, timeout=300))

    def get(self, ref):
        return _dict(self._c._call(self._c._models.GetModel, "GetModel", models_pb.GetModelRequest(ref=ref)))

    def tag(self, ref, tag, remove=False):
        r = models_pb.TagModelRequest(ref=ref, tag=tag, remove=remove)
        return _dict(self._c._call(self._c._models.TagModel, "TagModel", r))

    def delete(self, ref):
        return _dict(self._c._call(self._c._models.DeleteModel, "DeleteModel", models_pb.DeleteModelRequest(ref=ref)))

    def export(self, ref, out, store=None, authors=None, license="CC-BY-4.0", sample=None, program="retina-export"):
        """Writes a version as a BioImage.IO package (format 0.5; docs/models.md)
        with the registry's record of it attached as its lineage, as `retina
        models export` does: runs `program` (retina-export, on PATH), which
        reads the version's files from the store (`store`, else RETINA_STORE).
        Returns `out`; raises RuntimeError with retina-export's message."""
        import subprocess
        import tempfile

        store = store or os.environ.get("RETINA_STORE")
        if not store:
            raise ValueError("store: the store's path is needed (or RETINA_STORE)")
        m = self._c._call(self._c._models.GetModel, "GetModel", models_pb.GetModelRequest(ref=ref))
        with tempfile.NamedTemporaryFile("w", suffix=".json") as lineage:
            lineage.write(json_format.MessageToJson(m))
            lineage.flush()
            args = [program, "--weights", "model:" + m.id, "--store", store, "-o", out, "--lineage", lineage.name,
                    "--name", f"RETINA {m.name} v{m.version}", "--license", license,
                    "--description", m.description or f"RETINA model {m.id}"]
            for a in authors or [m.user]:
                args += ["--author", a]
            for t in m.tags:
                args += ["--tag", t]
            if sample:
                args += ["--sample", sample]
            r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"retina-export failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
        return out


class Study:
    """A study job (docs/evaluation.md "Studies")."""

    def __init__(self, client, job_id):
        self._c = client
        self.id = job_id

    def report(self):
        """Its aggregate (jobs/<id>/study.json) as a dict: arms, cells with
        the per-seed scores and summaries, and the Mann-Whitney tests."""
        m = self._c._call(self._c._jobs.GetJobMetrics, "GetJobMetrics", jobs_pb.GetJobMetricsRequest(id=self.id))
        return json.loads(m.study_json) if m.study_json else None

    def children(self):
        return self._c.jobs(filter=f"label.study={self.id}")


class Client:
    def __init__(self, address=None, token=None, token_file=None, tls=None, timeout=30.0):
        """`tls`: a CA file (PEM) to check the coordinator's certificate, or
        True for the system's roots; None (and no RETINA_CA): plaintext."""
        address = address or os.environ.get("RETINA_ADDRESS") or "127.0.0.1:50051"
        if token is None:
            token_file = token_file or os.environ.get("RETINA_TOKEN_FILE")
            token = os.environ.get("RETINA_TOKEN")
            if token_file:
                with open(os.path.expanduser(token_file)) as f:
                    token = f.read().split()[0]
        tls = tls if tls is not None else os.environ.get("RETINA_CA")
        options = [("grpc.max_receive_message_length", 64 << 20)]
        if tls:
            root = None
            if tls is not True:
                with open(os.path.expanduser(tls), "rb") as f:
                    root = f.read()
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root), options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self.address = address
        self.timeout = timeout
        self._metadata = [("authorization", "Bearer " + token)] if token else []
        self._jobs = jobs_rpc.JobServiceStub(self._channel)
        self._models = models_rpc.ModelServiceStub(self._channel)
        self.models = Models(self)

    def _call(self, method, name, request, timeout=None):
        try:
            return method(request, metadata=self._metadata, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e, name) from None

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def submit(self, job, world_size=1, min_world_size=0, name=None, priority=0, max_restarts=2, labels=None,
               gpu=False, slots_per_rank=1, request_id="", set=None):
        """Submits a job file (a path), YAML text or a dict; `set` overrides
        keys by their dotted path ({"pretrain.epochs": 2}), as --set does."""
        if isinstance(job, dict):
            config, default_name = job, "job"
        elif isinstance(job, str) and "\n" not in job and os.path.exists(job):
            with open(job) as f:
                text = f.read()
            config, default_name = (None, os.path.splitext(os.path.basename(job))[0])
        else:
            text, config, default_name = job, None, "job"
        if set:
            config = config if config is not None else (yaml.safe_load(text) or {})
            for key, value in set.items():
                _set_key(config, key, value)
        if config is not None:
            text = yaml.safe_dump(config, sort_keys=False)
        spec = jobs_pb.JobSpec(config_yaml=text, world_size=world_size, min_world_size=min_world_size,
                               priority=priority, max_restarts=max_restarts, name=name or default_name,
                               slots_per_rank=slots_per_rank,
                               slot_type=jobs_pb.SLOT_GPU if gpu else jobs_pb.SLOT_CPU, labels=labels or {})
        info = self._call(self._jobs.SubmitJob, "SubmitJob", jobs_pb.SubmitJobRequest(spec=spec, request_id=request_id))
        return Job(self, info)

    def job(self, job_id):
        return Job(self, jobs_pb.Job(id=job_id)).refresh()

    def jobs(self, filter="", limit=100):
        r = self._call(self._jobs.ListJobs, "ListJobs", jobs_pb.ListJobsRequest(filter=filter, page_size=limit))
        return [Job(self, j) for j in r.jobs]

    def workers(self):
        return [_dict(w) for w in self._call(self._jobs.ListWorkers, "ListWorkers", jobs_pb.ListWorkersRequest()).workers]

    def study(self, job_id):
        return Study(self, job_id)

    def predict(self, weights, inputs, output=None, mode="stack", format="ome-zarr", probabilities="none",
                world_size=1, **infer):
        """Submits an infer job (as `retina predict`): `inputs` a path or a
        list of paths/globs; other infer.* keys as keyword arguments."""
        section = dict(weights=weights, inputs=[inputs] if isinstance(inputs, str) else list(inputs), mode=mode,
                       format=format, probabilities=probabilities, **infer)
        if output:
            section["output"] = output
        return self.submit({"kind": "infer", "infer": section}, world_size=world_size, name="predict")
