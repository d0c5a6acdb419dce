#!/bin/sh
# First run of the compose setup: a fleet PKI, an admin PKI, the operator's key file and an
# admin token, in the telegate-secrets volume. Each is made once and kept. This is a
# development setup: the fleet CA's private key stays in the volume so that the simulator can
# issue vehicle certificates; a real deployment keeps ca.key where certificates are issued.
set -eu
D=/var/lib/telegate
umask 077
[ -f "$D/fleet/ca.crt" ] || telegate pki init "$D/fleet" --host telegate
[ -f "$D/admin-pki/ca.crt" ] || {
  telegate pki init "$D/admin-pki" --host telegate
  telegate pki issue "$D/admin-pki" ADMN0000000000001
}
[ -f "$D/keys.toml" ] || telegate keys new > "$D/keys.toml"
[ -f "$D/admin-token" ] || od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$D/admin-token"
echo "fleet PKI, admin PKI, key file and admin token are in the telegate-secrets volume"
