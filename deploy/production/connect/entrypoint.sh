#!/bin/sh
# Starts a Kafka Connect worker of deploy/production (compose service `connect`).
#  - The capture roles' passwords come from Docker secrets (files named by *_FILE) into the
#    variables the connector configs reference as ${env:...}; they are never written anywhere.
#  - connect-distributed.properties gets the tenant and this container's address.
set -eu

: "${OFISYNC_TENANT:?set OFISYNC_TENANT (compose.yaml passes it from .env)}"
OFISYNC_ERP_PASSWORD="$(cat "${OFISYNC_ERP_PASSWORD_FILE:?set OFISYNC_ERP_PASSWORD_FILE}")"
OFISYNC_CRM_PASSWORD="$(cat "${OFISYNC_CRM_PASSWORD_FILE:?set OFISYNC_CRM_PASSWORD_FILE}")"
export OFISYNC_ERP_PASSWORD OFISYNC_CRM_PASSWORD

case "$OFISYNC_TENANT" in
  *[!a-z0-9_]*) echo "OFISYNC_TENANT=$OFISYNC_TENANT: use a-z, 0-9 and _ only" >&2; exit 2 ;;
esac
address="${CONNECT_ADVERTISED_HOST:-$(hostname -i | cut -d' ' -f1)}"

config=/tmp/connect-distributed.properties
sed -e "s/@TENANT@/${OFISYNC_TENANT}/g" -e "s/@ADVERTISED_HOST@/${address}/g" \
  /opt/ofisync/connect-distributed.properties > "$config"
exec /opt/kafka/bin/connect-distributed.sh "$config"
