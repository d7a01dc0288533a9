"""Settings: environment and TOML, brand defaults, and one clear line for a bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from larkgate.config import ConfigError, load_settings


def test_lark_brand_uses_lark_hosts_and_the_redirect_uri_comes_from_the_public_url() -> None:
    settings = load_settings(brand="lark", public_url="https://gate.example.com/")
    assert settings.open_base_url == "https://open.larksuite.com"
    assert settings.authorize_url.startswith("https://accounts.larksuite.com/")
    assert settings.token_url == "https://open.larksuite.com/open-apis/authen/v2/oauth/token"
    assert settings.redirect_uri == "https://gate.example.com/oauth/callback"


def test_offline_access_is_always_asked_for_exactly_once() -> None:
    settings = load_settings(scopes=["im:chat", "offline_access", "im:chat"])
    assert settings.oauth_scopes == ["im:chat", "offline_access"]


def test_toml_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "larkgate.toml"
    config.write_text('app_id = "cli_from_toml"\nmax_instances = 7\nscopes = ["im:chat"]\n')
    monkeypatch.setenv("LARKGATE_CONFIG", str(config))
    monkeypatch.setenv("LARKGATE_MAX_INSTANCES", "9")
    settings = load_settings()
    assert settings.app_id == "cli_from_toml"
    assert settings.max_instances == 9  # the environment wins over the file


@pytest.mark.parametrize(
    ("name", "value"),
    [("MAX_INSTANCES", "0"), ("PORT", "eighty"), ("LARK_LANGUAGE", "fr"), ("BRAND", "x")],
)
def test_a_bad_setting_names_itself(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"LARKGATE_{name}", value)
    with pytest.raises(ConfigError, match=f"LARKGATE_{name}"):
        load_settings()


def test_serve_without_settings_stops_with_one_line_naming_the_setting(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "larkgate.cli", "serve"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == [lines[0]] and "LARKGATE_APP_ID" in lines[0]
    assert not (tmp_path / "data").exists()  # nothing half-created


def test_a_missing_or_broken_config_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LARKGATE_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_settings()
    broken = tmp_path / "broken.toml"
    broken.write_text("app_id = \n")
    monkeypatch.setenv("LARKGATE_CONFIG", str(broken))
    with pytest.raises(ConfigError, match=r"broken\.toml is not valid TOML"):
        load_settings()
    typo = tmp_path / "typo.toml"
    typo.write_text('app_secrte = "x"\n')
    monkeypatch.setenv("LARKGATE_CONFIG", str(typo))
    with pytest.raises(ConfigError, match=r"unknown setting app_secrte in .*typo.toml"):
        load_settings()
