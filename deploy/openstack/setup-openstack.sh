#!/usr/bin/env bash
# What the k2hdkc-dbaas openstack compute driver needs in a cloud, made with the openstack CLI:
# a service user and project, a network, flavors, a security group for the node ports, and the
# guest image. Run with admin credentials in the environment (OS_CLOUD or OS_* variables).
# Idempotent: existing objects are kept. Prints the [trove.openstack] section to paste into
# /etc/k2hdkc-dbaas/dbaas.toml.
#
#   deploy/openstack/setup-openstack.sh [--image FILE.qcow2] [--cidr 10.77.0.0/24]
set -euo pipefail

PROJECT=${K2HDKC_PROJECT:-k2hdkc}
USER_NAME=${K2HDKC_USER:-k2hdkc-dbaas}
NETWORK=${K2HDKC_NETWORK:-k2hdkc-net}
CIDR=10.77.0.0/24
IMAGE_FILE=
IMAGE_NAME=${K2HDKC_IMAGE:-k2hdkc-guest}
CONTROL_CIDR=${K2HDKC_CONTROL_CIDR:-0.0.0.0/0}   # where the control plane calls guests from
PW_FILE=${K2HDKC_PASSWORD_FILE:-./openstack-password}

while [ $# -gt 0 ]; do
    case "$1" in
        --image) IMAGE_FILE=$2; shift 2 ;;
        --cidr) CIDR=$2; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
command -v openstack >/dev/null || { echo "needs the openstack CLI (pip install python-openstackclient)" >&2; exit 1; }

exists() { openstack "$@" -f value -c id >/dev/null 2>&1; }

# Service project and user with the member role (least privilege: it boots and deletes its own
# servers and volumes, nothing else).
exists project show "$PROJECT" || openstack project create --description "k2hdkc DBaaS hosts" "$PROJECT" >/dev/null
if ! exists user show "$USER_NAME"; then
    umask 077
    head -c 32 /dev/urandom | base64 | tr -d '/+=' | head -c 32 > "$PW_FILE"
    openstack user create --project "$PROJECT" --password "$(cat "$PW_FILE")" "$USER_NAME" >/dev/null
    echo "service user password written to $PW_FILE (copy it to /etc/k2hdkc-dbaas/openstack-password, mode 0600)" >&2
fi
openstack role add --project "$PROJECT" --user "$USER_NAME" member

# Network for the hosts.
exists network show "$NETWORK" || openstack network create --project "$PROJECT" "$NETWORK" >/dev/null
exists subnet show "$NETWORK-subnet" || openstack subnet create --project "$PROJECT" --network "$NETWORK" --subnet-range "$CIDR" "$NETWORK-subnet" >/dev/null

# Security group: peers (8020 native, 8021 admin/control), guest RPC (8029, from the control
# plane), memcached (11211, from clients), gateways' control port (8031).
exists security group show k2hdkc --project "$PROJECT" || openstack security group create --project "$PROJECT" k2hdkc >/dev/null
rule() { openstack security group rule create --project "$PROJECT" --protocol tcp --dst-port "$1" --remote-ip "$2" k2hdkc >/dev/null 2>&1 || true; }
for p in 8020 8021 8031; do rule "$p" "$CIDR"; done
rule 8029 "$CONTROL_CIDR"
rule 8021 "$CONTROL_CIDR"
rule 11211 0.0.0.0/0

# Flavors matching the local catalog (ids 1-3 in Trove map to these names).
flavor() { exists flavor show "$1" || openstack flavor create --ram "$2" --vcpus "$3" --disk "$4" "$1" >/dev/null; }
flavor k2hdkc.small 512 1 5
flavor k2hdkc.medium 1024 1 10
flavor k2hdkc.large 2048 2 20

# The guest image: Debian with k2hdkc, k2hdkc-guest-agent, k2hr3 and
# deploy/systemd/k2hdkc-guest-agent.service installed (see deploy/trove/README.md).
if [ -n "$IMAGE_FILE" ]; then
    exists image show "$IMAGE_NAME" || openstack image create --disk-format qcow2 --container-format bare --file "$IMAGE_FILE" --private --project "$PROJECT" "$IMAGE_NAME" >/dev/null
fi

AUTH_URL=$(openstack endpoint list --service identity --interface public -f value -c URL | head -n1)
cat <<TOML
[trove]
compute = "openstack"

[trove.openstack]
auth_url = "${AUTH_URL%/v3}"
username = "$USER_NAME"
password_file = "/etc/k2hdkc-dbaas/openstack-password"
project_name = "$PROJECT"
image = "$(openstack image show "$IMAGE_NAME" -f value -c id 2>/dev/null || echo IMAGE-ID)"
network = "$(openstack network show "$NETWORK" -f value -c id)"
security_groups = ["k2hdkc"]
[trove.openstack.flavors]
"1" = "k2hdkc.small"
"2" = "k2hdkc.medium"
"3" = "k2hdkc.large"
TOML
