#!/bin/sh
# Installs the Debian packages the tests use, when they are missing:
# mosquitto (broker), influxdb (influxd 1.x), libcoap3-bin (coap-client, coap-client-openssl and
# coap-client-gnutls: independent CoAP and DTLS peers), chromium (headless browser for the
# dashboard tests), a C compiler (the end-to-end tests build a small preload library that steps
# a gateway's wall clock; building DTLSSocket, aiocoap's DTLS, from source needs it too, with
# autoconf, automake and the Python headers), systemd (systemd-analyze for the unit checks),
# dpkg, passwd and python3-venv (building the .deb and installing it into a throwaway root).
set -eu
missing=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$missing mosquitto"
command -v influxd >/dev/null 2>&1 || missing="$missing influxdb"
command -v coap-client-notls >/dev/null 2>&1 || missing="$missing libcoap3-bin"
command -v coap-client-openssl >/dev/null 2>&1 || missing="$missing libcoap3-bin"
command -v autoconf >/dev/null 2>&1 || missing="$missing autoconf"
command -v automake >/dev/null 2>&1 || missing="$missing automake"
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null || missing="$missing python3-dev"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
command -v dpkg-deb >/dev/null 2>&1 || missing="$missing dpkg"
command -v useradd >/dev/null 2>&1 || missing="$missing passwd"
/usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || missing="$missing python3-venv"
command -v cc >/dev/null 2>&1 || missing="$missing gcc libc6-dev"
[ -z "$missing" ] && exit 0
echo "installing Debian packages:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing
# The Debian packages start system services; the tests run their own servers on free ports.
for svc in mosquitto influxdb; do
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop "$svc" >/dev/null 2>&1 || true; fi
done
