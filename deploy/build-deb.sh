#!/bin/sh
# Builds citysense_<version>_all.deb with dpkg-deb from a citysense wheel:
#   sh deploy/build-deb.sh WHEEL [OUTDIR]        (make deb: the wheel of make dist, into dist/)
# The package holds a Python environment under /opt/citysense made with the system's
# /usr/bin/python3 (the Debian python3 the package depends on), /usr/bin/citysense,
# systemd units, example configurations in /etc/citysense (conffiles) and maintainer
# scripts that create the citysense user and /var/lib/citysense.
#
# Environment:
#   CITYSENSE_DEB_EXTRAS  extras installed in the environment (default: all)
#   CITYSENSE_WHEELS      folder of dependency wheels, reused between builds (default:
#                         build/wheels); filled from the package index when a wheel is missing
#   CITYSENSE_DEB_PYTHON  the interpreter of the target (default: /usr/bin/python3)
#   CITYSENSE_DEB_COMPRESS dpkg-deb's compression options (default: -Zxz -z6; -Zzstd builds
#                         in a fraction of the time for tests, for dpkg >= 1.21.18)
#   SOURCE_DATE_EPOCH     timestamps of the archive (default: the wheel's modification time)
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
WHEEL=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
OUT=${2:-$ROOT/dist}
EXTRAS=${CITYSENSE_DEB_EXTRAS:-all}
WHEELS=${CITYSENSE_WHEELS:-$ROOT/build/wheels}
PYTHON=${CITYSENSE_DEB_PYTHON:-/usr/bin/python3}
PREFIX=/opt/citysense

[ -f "$WHEEL" ] || { echo "build-deb: no wheel $WHEEL" >&2; exit 2; }
command -v dpkg-deb >/dev/null || { echo "build-deb: dpkg-deb is missing" >&2; exit 2; }
VERSION=$(basename "$WHEEL" | cut -d- -f2)
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
PYNEXT=$("$PYTHON" -c 'import sys; print("%d.%d" % (sys.version_info[0], sys.version_info[1] + 1))')
mkdir -p "$OUT" "$WHEELS"
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/citysense-deb.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
PKG=$STAGE/pkg
VENV=$PKG$PREFIX

# 1. the environment, at its staging path; then made to live at /opt/citysense
"$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# dependency wheels: from the cache alone when it has them all, else from the index
if ! $PIP download --no-index --find-links "$WHEELS" -d "$STAGE/check" "$WHEEL[$EXTRAS]" \
        >/dev/null 2>&1; then
    $PIP wheel -w "$WHEELS" "$WHEEL[$EXTRAS]"
    rm -f "$WHEELS"/citysense-*.whl
fi
$PIP install --no-index --find-links "$WHEELS" --no-compile "$WHEEL[$EXTRAS]"
$PIP uninstall -y pip setuptools >/dev/null 2>&1 || true
rm -rf "$VENV/share" "$VENV/include" "$VENV/lib/python$PYVER/site-packages/_distutils_hack" \
    "$VENV/lib/python$PYVER/site-packages/distutils-precedence.pth"
find "$VENV" -name __pycache__ -type d -prune -exec rm -rf {} +
# every text file naming the staging path (scripts' #!, activate, RECORD) names /opt/citysense
grep -rlI -- "$VENV" "$VENV" | while read -r f; do
    sed -i "s|$VENV|$PREFIX|g" "$f"
done
# byte code compiled as it will be found: /opt/citysense/... in tracebacks
"$PYTHON" -m compileall -q -j 0 -s "$PKG" -p / "$VENV/lib" >/dev/null

# 2. the command, units, configuration, documentation
mkdir -p "$PKG/usr/bin" "$PKG/lib/systemd/system" "$PKG/etc/citysense" \
    "$PKG/usr/share/doc/citysense" "$PKG/DEBIAN"
ln -s "$PREFIX/bin/citysense" "$PKG/usr/bin/citysense"
install -m 0644 "$ROOT"/deploy/systemd/*.service "$PKG/lib/systemd/system/"
install -m 0644 "$ROOT"/deploy/etc/*.toml "$PKG/etc/citysense/"
install -m 0644 "$ROOT/docs/deploy.md" "$PKG/usr/share/doc/citysense/deploy.md"
printf 'citysense %s\nLicense: Apache-2.0\n' "$VERSION" > "$PKG/usr/share/doc/citysense/copyright"
# /var/lib/citysense is made by postinst, not shipped: dpkg would delete it, empty, on remove

# 3. control data
for f in postinst prerm postrm; do install -m 0755 "$HERE/debian/$f" "$PKG/DEBIAN/$f"; done
(cd "$PKG" && find etc -type f | sort | sed 's|^|/|') > "$PKG/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$PKG" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@PYVER@/$PYVER/" -e "s/@PYNEXT@/$PYNEXT/" \
    -e "s/@SIZE@/$SIZE/" -e "s/@EXTRAS@/$EXTRAS/" \
    "$HERE/debian/control.in" > "$PKG/DEBIAN/control"
(cd "$PKG" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | sort \
    | xargs -d '\n' md5sum) > "$PKG/DEBIAN/md5sums"

# 4. the archive (files owned by root whoever builds it)
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(stat -c %Y "$WHEEL")}"
DEB="$OUT/citysense_${VERSION}_all.deb"
# shellcheck disable=SC2086
dpkg-deb --root-owner-group ${CITYSENSE_DEB_COMPRESS:--Zxz -z6} --build "$PKG" "$DEB" >/dev/null
echo "$DEB"
