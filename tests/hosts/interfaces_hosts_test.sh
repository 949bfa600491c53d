#!/usr/bin/env bash
# The interface a gang forms on (issue 31), with hosts that have two
# interfaces: eth0 on the cluster network and eth1 with an address no other
# host reaches (tests/hosts/hosts.sh host_second_if). Two Gloo ranks, one on
# each of hosts 2 and 3 (tests/trainer/dist_worker, float64):
#   1. GLOO_SOCKET_IFNAME=eth0: the gang forms and trains;
#   2. RETINA_HOST_ADDR (the worker's advertised address), no interface
#      named: the gang forms on that address;
#   3. GLOO_SOCKET_IFNAME=eth1 (the wrong one): the rank that cannot connect
#      fails naming the interface and the address it bound and the peer
#      address it could not reach (gang failure (peer_unreachable)); the
#      other rank's connecting is abandoned with that cause (peer_failed)
#      instead of waiting out Gloo's connect timeout.
#
#   tests/hosts/interfaces_hosts_test.sh BUILD_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "$1" && pwd)
[[ -x $build/tests/dist_worker ]] || { echo "SKIP: the trainer tests are not built"; exit 77; }
# shellcheck source=hosts.sh
source "$here/hosts.sh"
hosts_up 3
hosts_work
for i in 2 3; do host_second_if "$i" eth1 "198.18.0.10$i"; done
host_exec 3 timeout 3 bash -c "echo > /dev/tcp/198.18.0.102/9" 2>/dev/null &&
  fail "198.18.0.102 (host 2's eth1) is reachable from host 3: the test network is not what it should be"

# gang CASE ENV...: ranks 0 (host 2) and 1 (host 3); sets rc0, rc1.
gang() {
  local name=$1 port=$((29700 + RANDOM % 200))
  shift
  rc0=0 rc1=0
  host_exec 3 env "$@" RANK=1 WORLD_SIZE=2 MASTER_ADDR="$(host_addr 2)" MASTER_PORT=$port ${host3_addr:+RETINA_HOST_ADDR=$host3_addr} \
    RETINA_TEST_DTYPE=double OMP_NUM_THREADS=1 RETINA_TEST_TIMEOUT_MS=20000 "$build/tests/dist_worker" "$work/$name.pt" 1 \
    >"$work/$name-rank1.log" 2>&1 &
  local p=$!
  host_exec 2 env "$@" RANK=0 WORLD_SIZE=2 MASTER_ADDR="$(host_addr 2)" MASTER_PORT=$port ${host2_addr:+RETINA_HOST_ADDR=$host2_addr} \
    RETINA_TEST_DTYPE=double OMP_NUM_THREADS=1 RETINA_TEST_TIMEOUT_MS=20000 "$build/tests/dist_worker" "$work/$name.pt" 1 \
    >"$work/$name-rank0.log" 2>&1 || rc0=$?
  wait "$p" || rc1=$?
}

host2_addr='' host3_addr=''
gang eth0 GLOO_SOCKET_IFNAME=eth0
[[ $rc0 == 0 && $rc1 == 0 && -s $work/eth0.pt ]] || fail "GLOO_SOCKET_IFNAME=eth0: exits $rc0 $rc1"
echo "GLOO_SOCKET_IFNAME=eth0: the gang formed across hosts 2 and 3"

host2_addr=$(host_addr 2) host3_addr=$(host_addr 3)
gang advertised RETINA_TEST_NOTHING=1
[[ $rc0 == 0 && $rc1 == 0 && -s $work/advertised.pt ]] || fail "RETINA_HOST_ADDR: exits $rc0 $rc1"
echo "RETINA_HOST_ADDR (the worker's --host): the gang formed on 198.18.0.2 and 198.18.0.3"

host2_addr='' host3_addr=''
gang wrong GLOO_SOCKET_IFNAME=eth1
[[ $rc0 != 0 && $rc1 != 0 ]] || fail "GLOO_SOCKET_IFNAME=eth1 (unreachable): exits $rc0 $rc1, not both failed"
r1=$(cat "$work/wrong-rank1.log") r0=$(cat "$work/wrong-rank0.log")
[[ $r1 == *"gang failure (peer_unreachable): rank 1 on "*"Gloo bound eth1 (GLOO_SOCKET_IFNAME)"*"198.18.0.103"*"198.18.0.102"* ]] ||
  fail "rank 1's error does not name the interface, its address and the peer's: $r1"
[[ $r0 == *"gang failure (peer_failed): rank 0 on "*"connecting the Gloo mesh (bound eth1"*"abandoned after"*"rank 1 on "* ]] ||
  fail "rank 0 did not abandon with rank 1's cause: $r0"
echo "GLOO_SOCKET_IFNAME=eth1 (unreachable): both ranks failed naming it"
echo "  rank 1: $(grep -o 'gang failure.*' "$work/wrong-rank1.log" | cut -c1-300)"
echo "  rank 0: $(grep -o 'gang failure.*abandoned after [0-9.]* s' "$work/wrong-rank0.log")"
echo "PASS"
