#!/usr/bin/env bash
# e2e/node-agent/smoke.sh — checks the node agent through a real API server.
# Needs a running testbed: eval "$(e2e/testbed env)" (KUBECONFIG; HOLDFAST_TESTBED_DIR
# for the PV-directory check). Waits on conditions, never on bare sleeps; prints
# the state it saw when a check fails. Ends with "N passed, N failed".
set -uo pipefail

KUBECTL=${HOLDFAST_TESTBED_KUBECTL:-kubectl}
NS=agent-smoke-$$
pass=0 fail=0
k() { "$KUBECTL" "$@"; }
ok() { echo "ok   - $*"; pass=$((pass + 1)); }
bad() { echo "FAIL - $*"; fail=$((fail + 1)); }
dump() { k -n "$NS" get pods -o wide; k -n "$NS" get events --sort-by=.lastTimestamp | tail -20; }
check() { # check NAME EXPECTED ACTUAL
  if [[ "$3" == *"$2"* ]]; then ok "$1"; else bad "$1: expected '$2' in: $3"; dump; fi
}
wait_phase() { # wait_phase POD PHASE...
  local pod=$1 p; shift
  for _ in $(seq 1 120); do
    p=$(k -n "$NS" get pod "$pod" -o jsonpath='{.status.phase}' 2>/dev/null)
    for want in "$@"; do [[ $p == "$want" ]] && return 0; done
    sleep 0.5
  done
  echo "pod $pod: phase '$p', wanted $*"; return 1
}

k create namespace "$NS" >/dev/null
trap 'k delete namespace "$NS" --wait=false >/dev/null 2>&1' EXIT

k apply -n "$NS" -f - >/dev/null <<'EOF'
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: Secret
metadata: {name: s}
stringData: {password: hunter2}
---
apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  restartPolicy: Never
  securityContext: {runAsUser: 1000, runAsGroup: 1000}
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'id -u; echo "pw=$PW"; echo smoke-data > /data/file.txt; touch /etc/s/x || echo ro; echo done > /dev/termination-log']
    env: [{name: PW, valueFrom: {secretKeyRef: {name: s, key: password}}}]
    volumeMounts: [{name: data, mountPath: /data}, {name: s, mountPath: /etc/s}]
  volumes:
  - {name: data, persistentVolumeClaim: {claimName: data}}
  - {name: s, secret: {secretName: s}}
---
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  terminationGracePeriodSeconds: 10
  containers:
  - name: main
    image: busybox
    command: [sh, -c, 'trap "echo got-TERM; exit 0" TERM; while true; do echo tick; sleep 1; done']
    env: [{name: FOO, value: bar}]
    volumeMounts: [{name: data, mountPath: /data, readOnly: true}]
  volumes:
  - {name: data, persistentVolumeClaim: {claimName: data}}
EOF

if wait_phase writer Succeeded; then ok "writer Succeeded"; else bad "writer Succeeded"; dump; fi
logs=$(k -n "$NS" logs writer 2>&1)
check "logs show runAsUser" "1000" "$logs"
check "logs show the secret env" "pw=hunter2" "$logs"
check "secret volume is read-only" "Read-only file system" "$logs"
check "termination message" "done" "$(k -n "$NS" get pod writer -o jsonpath='{.status.containerStatuses[0].state.terminated.message}')"
if [[ -n "${HOLDFAST_TESTBED_DIR:-}" ]]; then
  pv=$(k -n "$NS" get pvc data -o jsonpath='{.spec.volumeName}')
  handle=$(k get pv "$pv" -o jsonpath='{.spec.csi.volumeHandle}')
  check "file in the PV's hostpath directory" "smoke-data" "$(cat "$HOLDFAST_TESTBED_DIR/csi/data/$handle/file.txt" 2>&1)"
fi

if k -n "$NS" wait --for=condition=Ready pod/sleeper --timeout=60s >/dev/null; then ok "sleeper Ready"; else bad "sleeper Ready"; dump; fi
out=$(k -n "$NS" exec sleeper -- sh -c 'echo FOO=$FOO; cat /data/file.txt; exit 3' 2>&1); rc=$?
check "exec output and env" "FOO=bar
smoke-data" "$out"
check "exec exit code" "3" "$rc"
check "exec stdin" "piped-in" "$(echo piped-in | k -n "$NS" exec -i sleeper -- cat 2>&1)"
check "exec into a read-only volume" "Read-only file system" "$(k -n "$NS" exec sleeper -- touch /data/y 2>&1)"

follow=$(mktemp)
k -n "$NS" logs -f sleeper > "$follow" 2>&1 &
fpid=$!
for _ in $(seq 1 60); do grep -q tick "$follow" && break; sleep 0.5; done
if k -n "$NS" delete pod sleeper --timeout=60s >/dev/null; then ok "pod deleted after graceful stop"; else bad "pod deletion"; dump; fi
if wait "$fpid"; then ok "logs -f ended with the container"; else bad "logs -f exit status"; fi
check "container saw SIGTERM" "got-TERM" "$(cat "$follow")"
rm -f "$follow"
check "events recorded" "Started" "$(k -n "$NS" get events -o jsonpath='{.items[*].reason}')"

echo "$pass passed, $fail failed"
((fail == 0))
