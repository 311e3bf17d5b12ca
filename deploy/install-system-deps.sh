#!/bin/sh
# Installs the Debian packages the tests use, when they are missing:
# mosquitto (broker), influxdb (influxd 1.x), libcoap3-bin (coap-client, an independent CoAP
# peer), chromium (headless browser for the dashboard tests), a C compiler (the end-to-end
# tests build a small preload library that steps a gateway's wall clock).
set -eu
missing=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$missing mosquitto"
command -v influxd >/dev/null 2>&1 || missing="$missing influxdb"
command -v coap-client-notls >/dev/null 2>&1 || missing="$missing libcoap3-bin"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
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
