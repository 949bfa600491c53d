"""Python client of the RETINA training service (docs/python.md).

    from retina_client import Client
    c = Client("127.0.0.1:50051", token_file="~/.retina/token")
    job = c.submit("pretrain.yaml", world_size=2, set={"pretrain.epochs": 2})
    for event in job.watch():
        print(event)
    rows = job.metrics()          # a pandas DataFrame when pandas is installed

Errors are RetinaError subclasses carrying the gRPC code and, when the
service named one, the field (`spec.config_yaml`, `name`, ...).
"""
from retina_client.client import Client, Event, Job, Models, Study
from retina_client.errors import (AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied,
                                  RetinaError, Unauthenticated, Unavailable)

__version__ = "0.1.0"
__all__ = ["Client", "Job", "Event", "Models", "Study", "RetinaError", "InvalidArgument", "NotFound",
           "PermissionDenied", "Unauthenticated", "FailedPrecondition", "AlreadyExists", "Unavailable"]
