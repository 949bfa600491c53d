#!/usr/bin/env bash
# deploy/systemd: the units (coordinator, worker, model server) pass `systemd-analyze verify` with no complaint
# (ExecStart pointed at this build's binaries), restart on failure, read an
# environment file, and give the worker longer to stop than its ranks' grace.
# Exit 77 (skipped) without systemd-analyze.
#   tests/deploy/systemd_test.sh SOURCE_DIR BUILD_DIR
set -euo pipefail
SOURCE=$1 BUILD=$2
command -v systemd-analyze >/dev/null || { echo "SKIPPED: systemd-analyze not installed (Debian systemd)"; exit 77; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for unit in coordinator worker serve; do
  src=$SOURCE/deploy/systemd/retina-$unit.service
  grep -q '^Restart=on-failure$' "$src" || { echo "FAIL: retina-$unit.service does not restart on failure"; exit 1; }
  grep -q "^EnvironmentFile=-/etc/default/retina-$unit$" "$src" || { echo "FAIL: retina-$unit.service has no environment file"; exit 1; }
  sed "s|/usr/local/bin/retina-$unit|$BUILD/services/retina-$unit|" "$src" >"$work/retina-$unit.service"
  out=$(cd "$work" && systemd-analyze verify --man=no "./retina-$unit.service" 2>&1) ||
    { echo "FAIL: systemd-analyze verify retina-$unit.service: $out"; exit 1; }
  # verify exits 0 on ignored lines; any output is a problem in the unit.
  if [[ -n $out ]]; then echo "FAIL: retina-$unit.service: $out"; exit 1; fi
done
stop=$(sed -n 's/^TimeoutStopSec=//p' "$SOURCE/deploy/systemd/retina-worker.service")
grace=$(grep -o 'absl::Duration grace = absl::Seconds([0-9]*)' "$SOURCE/services/worker/worker.h" | grep -o '[0-9]*' | tail -1)
[[ -n $grace ]] || { echo "FAIL: the worker's default grace (absl::Duration grace in services/worker/worker.h) not found"; exit 1; }
(( stop > grace )) || { echo "FAIL: worker TimeoutStopSec=$stop is not above the ranks' grace ($grace s)"; exit 1; }
echo "PASS: the three units verify; worker stop timeout $stop s > rank grace $grace s"
