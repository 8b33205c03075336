#!/usr/bin/env bash
# Installs the Debian packages sls_core's tests need, when they are missing:
#   softhsm2    - a PKCS#11 token in software, for the HSM key provider's tests;
#   postgresql  - the server binaries (initdb, pg_ctl, postgres) for the PostgreSQL store's
#                 tests and benchmarks; scripts/pg_local.py runs a private cluster with them;
#   systemd     - systemd-analyze, which verifies deploy/systemd/sls-core.service offline;
#   gcc, libssl-dev - a C compiler and OpenSSL's headers, for the C reference loop that
#                 benches/kernel_report.py builds (benches/ocra_ref.c, linked with -lcrypto).
# Uses apt-get (as root, or through sudo when it is there); does nothing when all are present.
set -euo pipefail

missing=()
command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1 \
    || missing+=(postgresql)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
[ -e /usr/include/openssl/sha.h ] || missing+=(libssl-dev)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo -n)
else
    echo "system-packages: need ${missing[*]} (apt-get install as root)" >&2
    exit 1
fi
echo "system-packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
