#!/bin/sh
# The local Synapse image's stand-in for the official image's `generate`: on the first run, writes
# /data/homeserver.yaml (SQLite, registration closed, a registration_shared_secret for the admin
# register API, listening on 8008 on every address), the signing key and a log config that logs
# to stderr (`podman logs`); later runs find homeserver.yaml and change nothing.
set -eu
config=/data/homeserver.yaml
if [ -f "$config" ]; then
    exit 0
fi
# --open-private-ports: listen on the container's network, not only its loopback.
python3 -m synapse.app.homeserver --generate-config \
    --server-name "${SYNAPSE_SERVER_NAME:?}" --report-stats "${SYNAPSE_REPORT_STATS:-no}" \
    --config-path "$config" --data-directory /data --open-private-ports
# Closed already by default; said out loud, as accounts come only from the shared secret.
echo "enable_registration: false" >>"$config"
sed -i 's/handlers: \[buffer\]/handlers: [console]/' "/data/$SYNAPSE_SERVER_NAME.log.config"
