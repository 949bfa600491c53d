"""Holds a c10d TCPStore server the way torchrun's agent does.

  hold_store.py PORT READY_FILE SECONDS

Serves 127.0.0.1:PORT (PyTorch's own TCPStore, is_master=True), writes
READY_FILE once it listens, and exits after SECONDS.
"""
import datetime
import sys
import time

import torch.distributed as dist


def _takes_use_libuv():
    """pybind signatures are not introspectable: their docstring lists the keywords."""
    return "use_libuv" in (dist.TCPStore.__init__.__doc__ or "")


def main():
    port, ready, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    kw = {}
    # PyTorch 2.2+ takes use_libuv and defaults it to True from 2.4, which a
    # build without libuv (Debian 13's 2.6) refuses; the classic server is
    # what torchrun's agent falls back to there, and speaks the same protocol.
    if _takes_use_libuv():
        kw["use_libuv"] = False
    store = dist.TCPStore("127.0.0.1", port, 3, True, datetime.timedelta(seconds=60), wait_for_workers=False, **kw)
    store.set("agent/held-by", "hold_store.py")
    with open(ready, "w") as f:
        f.write("ready\n")
    time.sleep(seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
