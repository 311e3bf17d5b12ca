"""The Debian package: built here with deploy/build-deb.sh (dpkg-deb), installed into a
throwaway root with ``dpkg --root`` (maintainer scripts run without chroot, honouring
``DPKG_ROOT``; no network), then removed and purged.

Dependency wheels are kept in build/wheels between runs (the first run fetches them from the
package index); the archive is compressed with zstd here (``make deb`` uses xz) to keep the
test short.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from citysense import __version__
from tests.servers import ROOT

pytestmark = pytest.mark.skipif(
    shutil.which("dpkg-deb") is None or shutil.which("dpkg") is None,
    reason="dpkg-deb missing (make test installs it)",
)

WHEELS = ROOT / "build" / "wheels"
SERVICES = ("edge", "ingest", "api", "alerts")


def build_wheel(out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("citysense-*.whl")
    return wheel


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("deb")
    wheel = build_wheel(work / "dist")
    env = dict(
        os.environ,
        CITYSENSE_WHEELS=str(WHEELS),
        CITYSENSE_DEB_COMPRESS="-Zzstd -z3",
        TMPDIR=str(work),
    )
    result = subprocess.run(
        ["sh", str(ROOT / "deploy" / "build-deb.sh"), str(wheel), str(work / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.name == f"citysense_{__version__}_all.deb"
    print(f"{path.name}: {path.stat().st_size / 2**20:.1f} MiB (zstd)")
    return path


def dpkg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """An empty system: a dpkg database, the account files with a dialout group."""
    r = tmp_path / "root"
    for d in ("var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "etc"):
        (r / d).mkdir(parents=True)
    (r / "var/lib/dpkg/status").touch()
    (r / "var/lib/dpkg/available").touch()
    (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (r / "etc/group").write_text("root:x:0:\ndialout:x:20:\n")
    (r / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (r / "etc/gshadow").write_text("root:*::\ndialout:*::\n")
    yield r
    shutil.rmtree(r, ignore_errors=True)


def accounts(root: Path, name: str) -> list[list[str]]:
    return [
        line.split(":")
        for line in (root / "etc" / name).read_text().splitlines()
        if line.startswith("citysense:") or line.startswith("dialout:")
    ]


def test_install_remove_purge_in_a_throwaway_root(deb: Path, root: Path) -> None:
    result = dpkg(root, "-i", str(deb))
    assert result.returncode == 0, result.stdout + result.stderr

    # files
    venv = root / "opt" / "citysense"
    launcher = venv / "bin" / "citysense"
    assert launcher.read_text().splitlines()[0] == "#!/opt/citysense/bin/python"
    assert os.readlink(root / "usr/bin/citysense") == "/opt/citysense/bin/citysense"
    # the environment's interpreter is the system's python3 (a dependency of the package)
    assert os.readlink(venv / "bin" / "python3").startswith("/usr/bin/python3")
    units = {p.name for p in (root / "lib/systemd/system").iterdir()}
    assert units == {f"citysense-{s}{at}.service" for s in SERVICES for at in ("", "@")}
    assert (root / "usr/share/doc/citysense/deploy.md").is_file()
    staged = [
        p
        for p in (venv / "bin").iterdir()
        if p.is_file() and not p.is_symlink() and b"citysense-deb." in p.read_bytes()
    ]
    assert not staged, f"staging paths left in {staged}"

    # conffiles: the example configurations
    conffiles = (root / "var/lib/dpkg/info/citysense.conffiles").read_text().split()
    assert conffiles == [f"/etc/citysense/{s}.toml" for s in sorted(SERVICES)]
    for path in conffiles:
        assert (root / path.lstrip("/")).is_file()

    # the user creation script: a system user with no login, in dialout; the state folder
    ((_, _, uid, gid, _, home, shell),) = [a for a in accounts(root, "passwd")]
    assert 0 < int(uid) < 1000 and home == "/var/lib/citysense" and shell == "/usr/sbin/nologin"
    groups = {g[0]: g for g in accounts(root, "group")}
    assert groups["citysense"][2] == gid
    assert "citysense" in groups["dialout"][3].split(",")
    state = root / "var/lib/citysense"
    st = state.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (int(uid), int(gid), 0o700)

    # the command runs from the installed environment (its own interpreter and packages)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    run = subprocess.run(
        [str(venv / "bin/python"), str(launcher), "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=60,
    )
    assert run.returncode == 0 and "usage: citysense" in run.stdout, run.stderr
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import citysense, edge; print(edge.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=60,
    )
    assert where.stdout.startswith(str(venv / "lib")), where

    # installing again (an upgrade to the same version) keeps one user
    (state / "outbox.db").write_bytes(b"state")
    (root / "etc/citysense/edge.toml").write_text('gateway = "gw-site-7"\n')
    assert dpkg(root, "-i", str(deb)).returncode == 0
    assert len(accounts(root, "passwd")) == 1

    # remove: programs gone, configuration and state kept
    result = dpkg(root, "-r", "citysense")
    assert result.returncode == 0, result.stderr
    assert not (root / "opt/citysense").exists()
    assert not (root / "usr/bin/citysense").exists()
    assert not (root / "lib/systemd/system/citysense-edge.service").exists()
    assert (root / "etc/citysense/edge.toml").read_text() == 'gateway = "gw-site-7"\n'
    assert (state / "outbox.db").read_bytes() == b"state"

    # purge: configuration and state gone
    result = dpkg(root, "-P", "citysense")
    assert result.returncode == 0, result.stderr
    assert not (root / "etc/citysense").exists()
    assert not state.exists()
