#!/usr/bin/env bash
# The host cluster (tests/hosts/hosts.sh) itself: three hosts with their own
# addresses and nothing else, TCP between them, no route out, a partition
# that cuts one host off and heals, a host crash, and nothing left behind
# after the run (a second process checks, after this one's trap ran).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${RETINA_PYTHON3:-/usr/bin/python3}
if [[ ${1:-} != --inner ]]; then
  status=0
  bash "$0" --inner &
  inner=$!
  wait "$inner" || status=$?
  [[ $status -eq 77 ]] && exit 77
  # This run's namespaces only: other tests may have hosts up meanwhile.
  left=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -c "^rh$inner-" || true)
  [[ $status -eq 0 ]] || { echo "FAIL: the host test failed ($status)"; exit 1; }
  [[ $left -eq 0 ]] || { echo "FAIL: $left namespace(s) left behind: $(ip netns list)"; exit 1; }
  echo "PASS"
  exit 0
fi
# shellcheck source=hosts.sh
source "$here/hosts.sh"
hosts_up 3
fail() { echo "FAIL: $*"; exit 1; }

# Each host: lo and eth0 only, its own address, no default route.
for i in 1 2 3; do
  links=$(host_exec "$i" ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort | tr '\n' ' ')
  [[ $links == "eth0 lo " ]] || fail "host $i has links [$links]"
  host_exec "$i" ip -o -4 addr show dev eth0 | grep -q "inet $(host_addr "$i")/24" || fail "host $i: no $(host_addr "$i")"
  [[ -z $(host_exec "$i" ip route show default) ]] || fail "host $i has a default route"
  host_exec "$i" ip route get 192.0.2.1 >/dev/null 2>&1 && fail "host $i reaches outside 198.18.0.0/24"
done

# TCP from host 2 and host 3 to a server on host 1.
host_exec 1 "$python" -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('$(host_addr 1)', 29400)); s.listen(8)
while True:
    c, a = s.accept(); c.sendall(('hello ' + a[0]).encode()); c.close()
" &
server=$!
dial() {  # FROM_HOST: what the server on host 1 answered
  host_exec "$1" "$python" -c "
import socket, sys
for _ in range(50):
    try:
        s = socket.create_connection(('$(host_addr 1)', 29400), timeout=2); print(s.recv(64).decode()); sys.exit(0)
    except OSError:
        import time; time.sleep(0.1)
sys.exit(1)"
}
[[ $(dial 2) == "hello $(host_addr 2)" ]] || fail "host 2 cannot reach host 1"
[[ $(dial 3) == "hello $(host_addr 3)" ]] || fail "host 3 cannot reach host 1"

# A partition: host 3 cut off, host 2 unaffected; then healed.
host_link 3 down
host_exec 3 "$python" -c "
import socket
try:
    socket.create_connection(('$(host_addr 1)', 29400), timeout=1); raise SystemExit(1)
except OSError:
    pass" || fail "host 3 still reaches host 1 while its link is down"
[[ $(dial 2) == "hello $(host_addr 2)" ]] || fail "host 2 lost host 1 when host 3 was cut off"
host_link 3 up
[[ $(dial 3) == "hello $(host_addr 3)" ]] || fail "host 3 does not reach host 1 after the partition healed"

# A host crash: every process on host 1 killed.
host_kill 1
wait "$server" 2>/dev/null || true
dial 2 >/dev/null 2>&1 && fail "the server survived its host's crash"
echo "hosts: 3 at $(host_addr 1)-$(host_addr 3), isolated, TCP, partition and heal, crash: ok"
