"""A test's handle on a running emulator: the /_emulator endpoints and a headless login."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlsplit

import httpx

from .config import EmulatorConfig

_DEFAULTS = EmulatorConfig(users=[])
DEFAULT_REDIRECT_URI = "http://127.0.0.1:9/callback"
OAUTH_V2_PATH = "/open-apis/authen/v2/oauth/token"
AUTHORIZE_PATH = "/open-apis/authen/v1/authorize"


def pkce_pair() -> tuple[str, str]:
    """A fresh code_verifier and its S256 code_challenge."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class EmulatorControl:
    """Steers an emulator over HTTP, the way a test in another process would."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EmulatorControl:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _post(self, path: str, body: dict[str, object]) -> dict[str, object]:
        response = self._http.post(path, json=body)
        response.raise_for_status()
        result: dict[str, object] = response.json()
        return result

    def _get(self, path: str, params: dict[str, str] | None = None) -> dict[str, object]:
        response = self._http.get(path, params=params)
        response.raise_for_status()
        result: dict[str, object] = response.json()
        return result

    def advance_clock(self, seconds: float) -> float:
        now = self._post("/_emulator/clock", {"advance": seconds})["now"]
        assert isinstance(now, float)
        return now

    def calls(self, path_prefix: str = "") -> list[dict[str, object]]:
        found = self._get("/_emulator/calls", {"path_prefix": path_prefix})["calls"]
        assert isinstance(found, list)
        return found

    def reset_calls(self) -> None:
        self._post("/_emulator/reset_calls", {})

    def tokens(self, open_id: str) -> dict[str, object]:
        return self._get("/_emulator/tokens", {"open_id": open_id})

    def queue_faults(self, **queues: list[dict[str, object]]) -> dict[str, object]:
        """Queue faults by endpoint class: token=[...], openapi=[...], app_token=[...]."""
        return self._post("/_emulator/faults", dict(queues))

    def hang(self, seconds: float, paths: str = "all") -> None:
        self._post("/_emulator/faults", {"hang_seconds": seconds, "hang_paths": paths})

    def clear_faults(self) -> None:
        self._post("/_emulator/faults", {"clear": True})

    def revoke(self, open_id: str) -> None:
        self._post("/_emulator/revoke", {"open_id": open_id})

    def require_scope(self, path_prefix: str, scope: str) -> None:
        self._post("/_emulator/require_scope", {"path_prefix": path_prefix, "scope": scope})

    def configure(self, **settings: object) -> dict[str, object]:
        return self._post("/_emulator/config", dict(settings))

    def reset(self) -> None:
        self._post("/_emulator/reset", {})

    def authorize(
        self,
        user: str,
        *,
        scope: str = "offline_access",
        redirect_uri: str = DEFAULT_REDIRECT_URI,
        state: str | None = None,
        code_challenge: str | None = None,
        client_id: str = _DEFAULTS.app_id,
    ) -> httpx.Response:
        """The authorize step with the user chosen up front; answers the 302 itself."""
        params = {
            "client_id": client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "scope": scope,
            "emulator_user": user,
        }
        if state is not None:
            params["state"] = state
        if code_challenge is not None:
            params |= {"code_challenge": code_challenge, "code_challenge_method": "S256"}
        return self._http.get(AUTHORIZE_PATH, params=params)

    def login(
        self,
        user: str,
        *,
        scope: str = "offline_access",
        redirect_uri: str = DEFAULT_REDIRECT_URI,
        client_id: str = _DEFAULTS.app_id,
        client_secret: str = _DEFAULTS.app_secret,
    ) -> dict[str, object]:
        """Log a user in with PKCE and return the token endpoint's answer, checked for 200."""
        verifier, challenge = pkce_pair()
        redirect = self.authorize(
            user,
            scope=scope,
            redirect_uri=redirect_uri,
            code_challenge=challenge,
            client_id=client_id,
        )
        if redirect.status_code != 302:
            raise RuntimeError(f"authorize answered {redirect.status_code}, not a redirect")
        code = parse_qs(urlsplit(redirect.headers["location"]).query)["code"][0]
        response = self._http.post(
            OAUTH_V2_PATH,
            json={
                "grant_type": "authorization_code",
                "client_id": client_id,
                "client_secret": client_secret,
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
            },
        )
        response.raise_for_status()
        tokens: dict[str, object] = response.json()
        return tokens
