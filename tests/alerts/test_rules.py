"""The rules file: every kind parses; a bad file names its file, line and reason (exit 2)."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

from alerts.rules import RulesError, parse_rules

GOOD = """
[[rule]]
name = "pm25-district-high"
kind = "metric"
metric = "pm25"
agg = "mean"
window = "15m"
group_by = "district"
above = 150.0
clear = 120.0
for = "10m"
severity = "major"
district = "zhengdong"

[[rule]]
name = "aqi-heavy"
kind = "aqi"
level = 5

[[rule]]
name = "jam"
kind = "congestion"
above = 8

[[rule]]
name = "leak"
kind = "leak"
above = 0.1

[[rule]]
name = "silent"
kind = "device_offline"
intervals = 3

[[rule]]
name = "gw-down"
kind = "gateway_offline"
for = "2m"

[[rule]]
name = "battery"
kind = "battery_low"
below = 10
clear = 20

[[rule]]
name = "radio"
kind = "radio_poor"
"""


def test_every_kind_parses() -> None:
    rules = parse_rules(GOOD, "good.toml")
    assert [r.kind for r in rules] == [
        "metric",
        "aqi",
        "congestion",
        "leak",
        "device_offline",
        "gateway_offline",
        "battery_low",
        "radio_poor",
    ]
    pm = rules[0]
    assert (pm.threshold, pm.clear, pm.for_ms, pm.window_ms, pm.line) == (
        150.0,
        120.0,
        600_000,
        900_000,
        2,
    )
    assert (
        pm.breached(150.1)
        and not pm.breached(150.0)
        and pm.cleared(119.9)
        and not pm.cleared(120.0)
    )
    assert rules[1].threshold == 201 and rules[1].breached(201)  # "at or above" a level
    assert rules[5].threshold == 120.0 and rules[5].for_ms == 0  # grace time as the threshold
    battery = rules[6]
    assert (
        not battery.above
        and battery.breached(9)
        and battery.cleared(21)
        and not battery.cleared(15)
    )
    assert rules[7].metric == "rsrp" and rules[7].threshold == -120.0


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (
            '[[rule]]\nname = "a"\nkind = "metric"\nmetric = "pm25"\nabove = 1\n[[rule]]\nname = "b"\nkind = "nope"\n',
            8,
            "kind must be one of",
        ),
        (
            '[[rule]]\nname = "a"\nkind = "metric"\nmetric = "pm25"\nabove = 100\nclear = 120\n',
            6,
            "clear (120) must not be above",
        ),
        (
            '[[rule]]\nname = "a"\nkind = "metric"\nmetric = "pm2.5"\nabove = 1\n',
            4,
            "metric 'pm2.5'",
        ),
        (
            '[[rule]]\nname = "a"\nkind = "metric"\nmetric = "pm25"\nabove = 1\nfor = "ten minutes"\n',
            6,
            "for must be a duration",
        ),
        ('[[rule]]\nname = "a"\nkind = "metric"\nmetric = "pm25"\n', 1, "needs a threshold"),
        (
            '[[rule]]\nname = "a"\nkind = "metric"\nmetric = "pm25"\nabove = 1\nbelow = 0\n',
            1,
            "either above or below",
        ),
        ('[[rule]]\nname = "a"\nkind = "device_offline"\nthreshold = 3\n', 4, "take no threshold"),
        (
            '[[rule]]\nname = "a"\nkind = "device_offline"\n\n[[rule]]\nname = "a"\nkind = "device_offline"\n',
            6,
            "already used on line 1",
        ),
        (
            '[[rule]]\nname = "a"\nkind = "metric"\nmetric = "pm25"\nabove = "high"\n',
            5,
            "above must be a number",
        ),
        (
            '[[rule]]\nname = "a"\nkind = "metric"\nmetric = "pm25"\nabove = 1\nseverity = "huge"\n',
            6,
            "severity must be one of",
        ),
        ('[[rule]]\nname = "a"\nkind = "aqi"\nlevel = 9\n', 4, "level must be 1-6"),
        ('[[rule]]\nname = "a"\nkind = "metric"\n metric = = "pm25"\n', 4, "Invalid"),
        ("", 1, "no [[rule]] tables"),
        (
            '[[rule]]\nname = "a"\nkind = "metric"\nmetric = "pm25"\nabove = 1\ndistrict = "Zheng Dong"\n',
            6,
            "not a valid district",
        ),
    ],
)
def test_a_bad_file_names_the_line_and_the_reason(text: str, line: int, reason: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(text, "r.toml")
    message = str(info.value)
    assert message.startswith(f"r.toml:{line}: "), message
    assert reason in message, message


def test_the_command_exits_2_naming_the_file_and_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nname = "x"\nkind = "metric"\nmetric = "pm25"\nabove = 5\nclear = 9\n'
    )
    for args, expected in (
        (["--rules", str(rules)], f"{rules}:6: rule 1: clear (9) must not be above"),
        (["--rules", str(tmp_path / "missing.toml")], "cannot read the rules file"),
        (
            ["--rules", str(rules.with_name("ok.toml")), "--webhook", "ftp://x/"],
            "not an http(s) URL",
        ),
        (
            ["--rules", str(rules.with_name("ok.toml")), "--webhook", "http://127.0.0.1:99999/"],
            "bad port",
        ),
        (
            ["--rules", str(rules.with_name("ok.toml")), "--bind", "0.0.0.0:0"],
            "not a loopback address",
        ),
        (["--rules", str(rules.with_name("gw.toml"))], "gateway_offline rules need --mqtt"),
        ([], "alerts needs --rules FILE"),
    ):
        rules.with_name("ok.toml").write_text('[[rule]]\nname = "x"\nkind = "device_offline"\n')
        rules.with_name("gw.toml").write_text('[[rule]]\nname = "g"\nkind = "gateway_offline"\n')
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "citysense",
                "alerts",
                "--state-dir",
                str(tmp_path / "s"),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert expected in proc.stderr, (args, proc.stderr)


def test_the_alarms_api_takes_the_keys_file(tmp_path: Path) -> None:
    """``--api-keys-file`` (written by ``citysense api keys add``) guards the alarms API too."""
    from tests.alerts.helpers import AlertsProcess, alerts_args

    keys = tmp_path / "keys.toml"
    added = subprocess.run(
        [
            *(sys.executable, "-m", "citysense", "api", "keys", "add", "--role", "viewer"),
            *("--file", str(keys), "--name", "duty"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    key = added.stdout.split()[-1] if added.stdout.split() else ""
    assert len(key) >= 43, added.stdout
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "x"\nkind = "device_offline"\n')
    alerts = AlertsProcess(tmp_path, alerts_args(rules, tmp_path / "s", api_keys_file=keys)).start()
    try:
        url = f"{alerts.base}/api/v1/alarms"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
        assert_security_headers(refused.value.headers)
        refused.value.close()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 200
            assert_security_headers(r.headers)
    finally:
        alerts.stop()


def assert_security_headers(headers: Message) -> None:
    """The alarms API sends the operator API's headers (one table: citysense.apikeys)."""
    assert headers["Content-Security-Policy"] == "default-src 'self'; frame-ancestors 'none'"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"
