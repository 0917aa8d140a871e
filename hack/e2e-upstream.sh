#!/usr/bin/env bash
# Runs upstream Kubernetes' own e2e tests (e2e.test v1.37.2, built from the Go
# module k8s.io/kubernetes in test/upstream) against a fresh `duet up`.
#
#   hack/e2e-upstream.sh            the dual-stack, DNS and ServiceCIDR selection (FOCUS, SKIP below)
#   FOCUS=... SKIP=... NODES=N hack/e2e-upstream.sh
#
# Needs root (duet up) and the binaries bin/duet, bin/agnhost, bin/coredns,
# bin/e2e.test and bin/ginkgo (make e2e-upstream builds them first).
# Reports and the cluster's logs go to ARTIFACTS (default: a new directory
# under /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."

FOCUS=${FOCUS:-'Feature:IPv6DualStack|\[sig-network\] DNS|\[sig-network\] Service CIDRs|\[sig-network\] ServiceCIDR and IPAddress API'}
# SCTP: this kernel has none. Of the DNS tests, those of the "DNS configMap"
# suite edit CoreDNS's ConfigMap in kube-system (Duet serves cluster DNS from
# its agents, not CoreDNS; the test that runs CoreDNS in a pod of its own
# passes); GCE's needs GCE.
SKIP=${SKIP:-'SCTPConnectivity|DNS configMap|Provider:gce'}
NODES=${NODES:-2}
TIMEOUT=${TIMEOUT:-45m}
ARTIFACTS=${ARTIFACTS:-$(mktemp -d /tmp/duet-e2e-upstream.XXXXXX)}
DATA_DIR="$ARTIFACTS/cluster"
mkdir -p "$ARTIFACTS"

for b in bin/duet bin/agnhost bin/coredns bin/e2e.test bin/ginkgo; do
  [ -x "$b" ] || { echo "e2e-upstream: $b is missing; run make e2e-upstream" >&2; exit 1; }
done

up_pid=
stop_cluster() {
  if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
    kill -INT "$up_pid"
    # duet up tears everything down on SIGINT; give it a minute.
    for _ in $(seq 600); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  bin/duet down --data-dir "$DATA_DIR" >>"$ARTIFACTS/up.log" 2>&1 || true
  # After a pass only the logs are worth keeping: the cluster's etcd
  # (about 64 MB, mostly preallocated WAL) goes.
  if [ "${rc:-1}" = 0 ]; then rm -rf "$DATA_DIR/etcd"; fi
}
trap stop_cluster EXIT

echo "e2e-upstream: starting duet up (log: $ARTIFACTS/up.log)"
bin/duet up --data-dir "$DATA_DIR" >"$ARTIFACTS/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 1800); do
  grep -q '^Cluster ready' "$ARTIFACTS/up.log" && break
  kill -0 "$up_pid" 2>/dev/null || { echo "e2e-upstream: duet up exited:" >&2; cat "$ARTIFACTS/up.log" >&2; exit 1; }
  sleep 0.1
done
grep -q '^Cluster ready' "$ARTIFACTS/up.log" || { echo "e2e-upstream: cluster not ready after 3 minutes" >&2; cat "$ARTIFACTS/up.log" >&2; exit 1; }

# The framework counts the cluster's nodes only in Ginkgo's first process;
# the others would skip every test that needs two nodes ("Requires at least
# 2 nodes (not -1)"), so the count is passed to all of them.
NUM_NODES=$(kubectl --kubeconfig "$DATA_DIR/admin.kubeconfig" get nodes -o name | wc -l)
echo "e2e-upstream: focus '$FOCUS', skip '$SKIP', $NODES parallel processes, $NUM_NODES cluster nodes"
start=$(date +%s)
set +e
root=$PWD
# From test/upstream, whose go.mod names the Ginkgo that e2e.test was built
# with (the CLI compares it with its own version).
(cd test/upstream && "$root/bin/ginkgo" --nodes="$NODES" --timeout="$TIMEOUT" --no-color --focus="$FOCUS" --skip="$SKIP" \
  --junit-report="$ARTIFACTS/junit.xml" --output-dir="$ARTIFACTS" \
  "$root/bin/e2e.test" -- \
  --kubeconfig "$DATA_DIR/admin.kubeconfig" --provider skeleton --num-nodes "$NUM_NODES" \
  --report-dir "$ARTIFACTS") 2>&1 | tee "$ARTIFACTS/e2e.log"
rc=${PIPESTATUS[0]}
set -e
echo "e2e-upstream: exit $rc after $(( $(date +%s) - start ))s; artifacts in $ARTIFACTS"
grep -E '^(Ran|PASS|FAIL|SUCCESS)|Passed \|' "$ARTIFACTS/e2e.log" | tail -5 || true
exit "$rc"
