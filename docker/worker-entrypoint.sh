#!/bin/sh
# Worker container start: wait for the API, make sure the work pool exists, register the
# deployments of prefect.yaml (idempotent: an existing deployment is updated), then run the worker.
set -eu
POOL="${KALORA_WORK_POOL:-kalora}"
cd /opt/kalora

echo "waiting for ${PREFECT_API_URL}/health"
i=0
until python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)" "${PREFECT_API_URL}/health" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -ge 60 ]; then echo "Prefect API not reachable at ${PREFECT_API_URL}" >&2; exit 1; fi
    sleep 2
done

prefect work-pool inspect "$POOL" >/dev/null 2>&1 || prefect work-pool create "$POOL" --type process
prefect --no-prompt deploy --all
exec prefect worker start --pool "$POOL" --type process
