"""A TCP relay between hosts that can stall or drop its connections: the
faults the kernel here cannot make (no netem), done in userspace.

    relay.py LISTEN_ADDR:PORT UPSTREAM_ADDR:PORT
      SIGUSR1  drop: reset every connection now (new ones are accepted)
      SIGUSR2  stall: stop forwarding (connections stay open) / resume

Each accepted connection gets its own upstream connection; bytes flow both
ways until either side closes. Prints one line per event on stdout.
"""
import select
import signal
import socket
import struct
import sys
import threading
import time


def address(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


stalled = threading.Event()
lock = threading.Lock()
pairs = set()


def reset(sock):
    try:  # SO_LINGER 0: close with a RST, as a dropping middlebox would
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


def pump(a, b):
    try:
        while True:
            if stalled.is_set():
                time.sleep(0.02)
                continue
            ready, _, _ = select.select([a, b], [], [], 0.1)
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except (OSError, ValueError):
        pass
    finally:
        with lock:
            pairs.discard((a, b))
        reset(a)
        reset(b)


def drop(*_):
    with lock:
        victims = list(pairs)
        pairs.clear()
    for a, b in victims:
        reset(a)
        reset(b)
    print(f"dropped {len(victims)} connection(s)", flush=True)


def stall(*_):
    if stalled.is_set():
        stalled.clear()
        print("forwarding", flush=True)
    else:
        stalled.set()
        print("stalled", flush=True)


def main():
    listen, upstream = address(sys.argv[1]), address(sys.argv[2])
    signal.signal(signal.SIGUSR1, drop)
    signal.signal(signal.SIGUSR2, stall)
    server = socket.create_server(listen)
    print(f"relaying {sys.argv[1]} -> {sys.argv[2]}", flush=True)
    while True:
        try:
            client, _ = server.accept()
        except InterruptedError:
            continue
        try:
            up = socket.create_connection(upstream, timeout=5)
            up.settimeout(None)
        except OSError:
            reset(client)
            continue
        with lock:
            pairs.add((client, up))
        threading.Thread(target=pump, args=(client, up), daemon=True).start()


main()
