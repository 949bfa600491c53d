"""Holds a c10d TCPStore server the way torchrun's agent does.

  hold_store.py PORT READY_FILE SECONDS

Serves 127.0.0.1:PORT (PyTorch's own TCPStore, is_master=True), writes
READY_FILE once it listens, and exits after SECONDS.
"""
import datetime
import sys
import time

import torch.distributed as dist


def main():
    port, ready, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    store = dist.TCPStore("127.0.0.1", port, 3, True, datetime.timedelta(seconds=60), wait_for_workers=False)
    store.set("agent/held-by", "hold_store.py")
    with open(ready, "w") as f:
        f.write("ready\n")
    time.sleep(seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
