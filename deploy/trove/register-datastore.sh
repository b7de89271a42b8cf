#!/usr/bin/env bash
# Registers the k2hdkc datastore in a real OpenStack Trove, so Trove's own taskmanager drives
# k2hdkc-guest-agent over RabbitMQ. Run on a Trove controller (trove-manage and the openstack
# CLI with admin credentials available).
#
#   deploy/trove/register-datastore.sh IMAGE_ID [VERSION]
#
# Trove itself needs a `k2hdkc` option group and cluster strategies before clusters of a new
# datastore work (trove/common/cfg.py, as AntPickax's k2hdkc_dbaas_trove patches it); single
# instances need only the registration below. See README.md next to this script.
set -euo pipefail
IMAGE=${1:?usage: $0 IMAGE_ID [VERSION]}
VERSION=${2:-0.1.0}
here=$(cd "$(dirname "$0")" && pwd)

command -v trove-manage >/dev/null || { echo "run this on a Trove controller (trove-manage not found)" >&2; exit 1; }

# The datastore, its version (manager k2hdkc, the guest image) and make it the default.
trove-manage datastore_update k2hdkc ""
trove-manage datastore_version_update k2hdkc "$VERSION" k2hdkc "$IMAGE" "" 1
trove-manage datastore_update k2hdkc "$VERSION"

# The configuration parameters (what `openstack database configuration parameter list` shows).
trove-manage db_load_datastore_config_parameters k2hdkc "$VERSION" "$here/validation-rules.json"

echo "k2hdkc $VERSION registered with image $IMAGE."
echo "Guest image: install k2hdkc, k2hdkc-guest-agent and deploy/systemd/k2hdkc-guest-agent.service;"
echo "write /etc/k2hdkc/guest.toml from deploy/trove/guest-agent-amqp.toml at boot (instance id and key from guest_info.conf)."
