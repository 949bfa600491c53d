#!/usr/bin/env python3
"""Segment an image, and a region of a volume in the store, with retina-serve
from Python: grpcio and the stubs the build generates from proto/
(build/proto/python), nothing else of ours. docs/serving.md.

    PYTHONPATH=build/proto/python python3 docs/examples/serve_client.py \\
        --server HOST:PORT --model NAME --image volume.tif [--region-volume PATH] \\
        [--token-file FILE] [--out labels.tif]
"""
import argparse
import sys

import grpc
import numpy as np
import tifffile

from retina.v1 import prediction_service_pb2 as pb
from retina.v1 import prediction_service_pb2_grpc as rpc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", required=True, help="a uint8 TIFF image or stack, sent inline")
    ap.add_argument("--region-volume", help="a volume in the server's store: its first planes are asked for too")
    ap.add_argument("--token-file", help="bearer token (the file retina --token-file reads)")
    ap.add_argument("--out", help="write the image's labels here (TIFF)")
    a = ap.parse_args()

    metadata = []
    if a.token_file:
        metadata.append(("authorization", "Bearer " + open(a.token_file).read().split()[0]))
    channel = grpc.insecure_channel(a.server, options=[("grpc.max_receive_message_length", 64 << 20)])
    server = rpc.PredictionServiceStub(channel)

    for m in server.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=30).models:
        print(f"model {m.name}: {m.config}, {m.classes} classes, window {m.window}, version {m.version}")

    # An image or stack inline: bytes, dtype and shape (z, y, x or y, x).
    image = np.ascontiguousarray(tifffile.imread(a.image))
    if image.dtype != np.uint8:
        sys.exit(f"{a.image}: {image.dtype}; this example sends uint8 (or set scaling='minmax')")
    request = pb.PredictRequest(model=a.model, probabilities=True,
                                array=pb.Array(data=image.tobytes(), dtype="uint8", shape=list(image.shape)))
    answer = server.Predict(request, metadata=metadata, timeout=600)
    labels = np.frombuffer(answer.labels.data, dtype=np.uint8).reshape(tuple(answer.labels.shape))
    probabilities = np.frombuffer(answer.probabilities.data, dtype=np.float32).reshape(
        tuple(answer.probabilities.shape))
    print(f"image {image.shape}: {answer.windows} windows in {answer.seconds:.2f} s, "
          f"classes present {sorted(np.unique(labels).tolist())}, probabilities {probabilities.shape}")
    if a.out:
        tifffile.imwrite(a.out, labels)

    # A region of a volume in the store: planes 0:2, rows and columns 0:32.
    if a.region_volume:
        region = pb.Region(volume=a.region_volume, z0=0, z1=2, y0=0, y1=32, x0=0, x1=32)
        answer = server.Predict(pb.PredictRequest(model=a.model, region=region), metadata=metadata, timeout=600)
        print(f"region {list(answer.labels.shape)} of {a.region_volume}: {answer.windows} windows")

    # Errors are gRPC status codes with a message naming the field.
    try:
        server.Predict(pb.PredictRequest(model=a.model, array=pb.Array(data=b"\0" * 10, dtype="uint8", shape=[4, 4])),
                       metadata=metadata, timeout=30)
    except grpc.RpcError as e:
        print(f"a bad request: {e.code().name}: {e.details()}")


if __name__ == "__main__":
    main()
