#!/usr/bin/env bash
# A test cluster of hosts on this machine (issue 31): N network namespaces,
# each a host with its own address from 198.18.0.0/24 (the benchmarking
# range) on eth0, joined by a bridge that lives in a namespace of its own
# (the "switch"), so nothing is added to the machine's own network: no
# route out of the cluster, no address outside 198.18.0.0/24.
#
#   source tests/hosts/hosts.sh
#   hosts_up 3                  # hosts 1..3 at 198.18.0.1..3 (exit 77 saying why where it cannot)
#   hosts_work                  # $work: a scratch folder removed at exit (kept
#                               # with RETINA_KEEP_WORK=1), and fail MESSAGE,
#                               # which prints the tails of $work/*.log, exits 1
#   host_exec 2 CMD...          # CMD on host 2 (its network; the same filesystem: the shared store)
#   host_addr 2                 # 198.18.0.2
#   host_link 2 down|up         # cut host 2 off the switch, or back (a partition)
#   host_kill 2                 # SIGKILL every process on host 2 (a host crash)
#   host_block 3 2              # host 3 can no longer reach host 2 (a blackhole
#                               # route on 3: its packets to 2 vanish, a stall
#                               # without errors); host_unblock 3 2 heals it
#   host_second_if 2 eth1 198.18.0.102
#                               # a second interface on host 2 with an address
#                               # no other host can reach (a management or
#                               # storage network the others are not on)
#
# Everything is removed at exit (the EXIT/INT/TERM trap: processes on the
# hosts killed, namespaces deleted), even when a test fails. A run killed
# with SIGKILL cannot run its trap: the next hosts_up removes namespaces whose
# owning process is gone (names rh<pid>-...).
set -euo pipefail

HOSTS_PREFIX="rh$$"
HOSTS_N=0

_hosts_skip() {
  echo "SKIP: $*"
  exit 77
}

# Namespaces of runs whose process is gone.
_hosts_reap_stale() {
  local ns pid
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    [[ $ns =~ ^rh([0-9]+)- ]] || continue
    pid=${BASH_REMATCH[1]}
    kill -0 "$pid" 2>/dev/null && continue
    _hosts_kill_ns "$ns"
    ip netns del "$ns" 2>/dev/null || true
  done
}

_hosts_kill_ns() {  # NS
  local pids
  pids=$(ip netns pids "$1" 2>/dev/null || true)
  [[ -n $pids ]] && kill -9 $pids 2>/dev/null || true
}

hosts_down() {
  local i
  for ((i = 1; i <= HOSTS_N; i++)); do _hosts_kill_ns "$HOSTS_PREFIX-h$i"; done
  for ((i = 1; i <= HOSTS_N; i++)); do ip netns del "$HOSTS_PREFIX-h$i" 2>/dev/null || true; done
  ip netns del "$HOSTS_PREFIX-sw" 2>/dev/null || true
  HOSTS_N=0
}

hosts_up() {  # N
  local n=$1 i
  [[ $(id -u) -eq 0 ]] || _hosts_skip "network namespaces need root; this test runs as $(id -un)"
  command -v ip >/dev/null || _hosts_skip "no ip command (iproute2)"
  ((n >= 1 && n <= 200)) || { echo "hosts_up: 1-200 hosts" >&2; exit 2; }
  _hosts_reap_stale
  ip netns add "$HOSTS_PREFIX-sw" 2>/dev/null || _hosts_skip "cannot create a network namespace here (ip netns add)"
  trap 'rc=$?; hosts_down; exit $rc' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  ip -n "$HOSTS_PREFIX-sw" link add br0 type bridge
  ip -n "$HOSTS_PREFIX-sw" link set br0 up
  for ((i = 1; i <= n; i++)); do
    local ns=$HOSTS_PREFIX-h$i a="r$$a$i" b="r$$b$i"
    ip netns add "$ns"
    HOSTS_N=$i
    ip link add "${a:0:15}" type veth peer name "${b:0:15}"
    ip link set "${a:0:15}" netns "$ns"
    ip link set "${b:0:15}" netns "$HOSTS_PREFIX-sw"
    ip -n "$ns" link set "${a:0:15}" name eth0
    ip -n "$ns" addr add "198.18.0.$i/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    ip -n "$HOSTS_PREFIX-sw" link set "${b:0:15}" master br0
    ip -n "$HOSTS_PREFIX-sw" link set "${b:0:15}" up
  done
}

host_addr() { echo "198.18.0.$1"; }
host_ns() { echo "$HOSTS_PREFIX-h$1"; }
host_exec() {  # I CMD...
  local i=$1
  shift
  ip netns exec "$HOSTS_PREFIX-h$i" "$@"
}
host_link() {  # I up|down
  ip -n "$HOSTS_PREFIX-h$1" link set eth0 "$2"
}
host_kill() { _hosts_kill_ns "$HOSTS_PREFIX-h$1"; }
host_block() { ip -n "$HOSTS_PREFIX-h$1" route add blackhole "198.18.0.$2/32"; }
host_unblock() { ip -n "$HOSTS_PREFIX-h$1" route del blackhole "198.18.0.$2/32"; }
host_second_if() {  # I NAME ADDR
  local ns=$HOSTS_PREFIX-h$1
  ip -n "$ns" link add "$2" type veth peer name "${2}p"
  ip -n "$ns" addr add "$3/32" dev "$2"
  ip -n "$ns" link set "$2" up
  # Answer ARP on eth0 only for eth0's own address (else the weak host model
  # makes the second address reachable through eth0 after all).
  ip netns exec "$ns" sysctl -qw net.ipv4.conf.all.arp_ignore=1
}

hosts_work() {
  work=$(mktemp -d)
  trap 'rc=$?; hosts_down; if [[ -n ${RETINA_KEEP_WORK:-} ]]; then echo "kept $work"; else rm -rf "$work"; fi; exit $rc' EXIT
}

fail() {
  echo "FAIL: $*"
  local f
  for f in "$work"/*.log; do
    [[ -e $f ]] || continue
    echo "--- $f"
    tail -n 20 "$f"
  done
  exit 1
}
