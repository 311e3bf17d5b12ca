"""Secret options: file twins, the environment, percent-decoded URLs, the argv warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from citysense.config import broker_url, load_settings, secrets_on_command_line
from citysense.errors import ConfigError


def test_userinfo_is_percent_decoded() -> None:
    s = load_settings("edge", {"mqtt": "mqtts://gw%2D01:p%40ss%2Fw%23rd@broker:8883"}, environ={})
    b = broker_url(s, "mqtt://127.0.0.1:1883")
    assert (b.username, b.password, b.tls, b.port) == ("gw-01", "p@ss/w#rd", True, 8883)


def test_password_file_and_its_environment_twin(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-the-file\n")
    s = load_settings(
        "edge",
        {"mqtt": "mqtt://url-user:url-pass@h", "mqtt_username": "gw-01"},
        environ={"CITYSENSE_MQTT_PASSWORD_FILE": str(secret)},
    )
    b = broker_url(s, "mqtt://127.0.0.1:1883")
    assert (b.username, b.password) == ("gw-01", "from-the-file")
    assert s.secret_free()["mqtt_password"] == "***"
    s = load_settings("ingest", {"influx_token_file": str(secret)}, environ={})
    assert s.influx_token == "from-the-file"


@pytest.mark.parametrize("content", [None, ""])
def test_a_missing_or_empty_secret_file_is_a_config_error(
    tmp_path: Path, content: str | None
) -> None:
    path = tmp_path / "pw"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match="--mqtt-password-file"):
        load_settings("edge", {"mqtt_password_file": str(path)}, environ={})


def test_secrets_on_the_command_line_are_named_not_shown() -> None:
    flags = secrets_on_command_line(
        {
            "mqtt": "mqtt://u:hunter2@h",
            "influx": "http://h:8086",
            "api_keys": ["k3y-0123456789:operator"],
            "mqtt_password_file": "/run/pw",
            "gateway": "gw-01",
        }
    )
    assert flags == ["--mqtt", "--api-keys"]


def test_cert_and_key_go_together(tmp_path: Path) -> None:
    cert = tmp_path / "c.crt"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="go together"):
        load_settings("edge", {"mqtt_cert": str(cert)}, environ={})


def test_a_secret_never_shows_in_the_settings_repr() -> None:
    from citysense.config import Settings

    s = Settings(mqtt_password="hunter2-pw", influx_token="tok-secret-1", api_keys="k:viewer")
    assert "hunter2-pw" not in repr(s) and "tok-secret-1" not in repr(s)
    assert "k:viewer" not in repr(s)
