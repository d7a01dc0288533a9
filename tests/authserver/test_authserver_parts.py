"""The authorization server's pure parts: redirect rules, resources, cookies, PKCE, limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.responses import Response

from larkgate.authserver.metadata import Resources, granted_scope
from larkgate.authserver.ratelimit import RateLimiter
from larkgate.authserver.redirects import RedirectRefused, check_registrable, matches
from larkgate.authserver.tokens import s256, verifier_matches
from larkgate.config import ConfigError, Settings, load_settings
from larkgate.pages import cookie_name, set_cookie


def _settings(public_url: str, tmp_path: Path) -> Settings:
    return load_settings(public_url=public_url, data_dir=tmp_path)


def test_a_loopback_redirect_matches_on_any_port_and_nothing_else_does() -> None:
    registered = ["http://127.0.0.1:3334/oauth/callback", "https://app.example/cb"]
    assert matches(registered, "http://127.0.0.1:49152/oauth/callback")
    assert not matches(registered, "http://localhost:3334/oauth/callback")
    assert not matches(registered, "http://127.0.0.1:3334/other")
    assert not matches(registered, "http://127.0.0.1:3334/oauth/callback?x=1")
    assert matches(registered, "https://app.example/cb")
    assert not matches(registered, "https://app.example:8443/cb")
    assert not matches(registered, "https://app.example/cb/")


@given(st.text(alphabet="abcdefghijklmnop/:.?=&%@#-_", min_size=1, max_size=40))
def test_a_non_loopback_registration_matches_only_itself(suffix: str) -> None:
    registered = ["https://app.example/cb"]
    requested = "https://app.example/cb" + suffix
    assert not matches(registered, requested)


@pytest.mark.parametrize(
    "uri", ["cursor://anysphere.cursor-retrieval/oauth/callback", "CURSOR://x/y"]
)
def test_a_private_scheme_needs_the_operator(uri: str) -> None:
    with pytest.raises(RedirectRefused):
        check_registrable(uri, [])
    assert check_registrable(uri.replace("CURSOR", "cursor"), ["cursor"])


def test_the_operator_cannot_declare_a_web_or_script_scheme_private(tmp_path: Path) -> None:
    for scheme in ("javascript", "https", "data"):
        with pytest.raises(ConfigError, match="OAUTH_REDIRECT_SCHEMES"):
            load_settings(oauth_redirect_schemes=[scheme], data_dir=tmp_path)


def test_resources_are_recognised_in_any_case_and_with_a_trailing_slash(tmp_path: Path) -> None:
    resources = Resources(_settings("https://gate.example.com", tmp_path))
    assert resources.canonical("https://Gate.Example.com/mcp/") == "https://gate.example.com/mcp"
    assert resources.canonical("HTTPS://GATE.EXAMPLE.COM/") == "https://gate.example.com"
    assert resources.canonical("https://gate.example.com/mcp?x=1") is None
    assert resources.canonical("https://gate.example.com/mcp#f") is None
    assert resources.canonical("https://gate.example.com.evil/mcp") is None
    assert resources.accepts("https://gate.example.com", "messages")
    assert not resources.accepts("https://gate.example.com/sse", "mcp")


def test_a_public_url_with_a_path_keeps_it_in_every_metadata_url(tmp_path: Path) -> None:
    resources = Resources(_settings("https://example.com/gate", tmp_path))
    assert resources.of_endpoint("mcp") == "https://example.com/gate/mcp"
    assert (
        resources.metadata_url("messages")
        == "https://example.com/.well-known/oauth-protected-resource/gate/sse"
    )


def test_cookies_are_host_only_and_secure_behind_https(tmp_path: Path) -> None:
    settings = _settings("https://gate.example.com", tmp_path)
    response = Response()
    set_cookie(response, settings, "larkgate_keys", "v", 60)
    header = response.headers["set-cookie"]
    assert header.startswith("__Host-larkgate_keys=v;")
    assert "Secure" in header and "HttpOnly" in header and "SameSite=lax" in header
    assert "Path=/" in header and "Domain" not in header
    assert cookie_name(_settings("http://127.0.0.1:8080", tmp_path), "x") == "x"


def test_pkce_s256_matches_rfc_7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert verifier_matches(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
    assert not verifier_matches("short", s256("short"))


def test_only_known_scopes_are_granted() -> None:
    assert granted_scope("") == "mcp"
    assert granted_scope("mcp offline_access admin") == "mcp offline_access"


def test_the_rate_limiter_counts_per_bucket_and_address() -> None:
    limiter = RateLimiter(per_minute=2)
    assert [limiter.allow("token", "a") for _ in range(3)] == [True, True, False]
    assert limiter.allow("token", "b") and limiter.allow("register", "a")
    assert limiter.retry_after == 30
