"""One settings object for the whole gateway: environment variables plus an optional TOML file.

Every setting carries a one-line help; `larkgate settings` and the README print them.
Environment variables are the field names upper-cased with the ``LARKGATE_`` prefix.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "LARKGATE_"
CONFIG_FILE_ENV = "LARKGATE_CONFIG"
LARK_MCP_VERSION = "0.5.1"
ADMIN_TOKEN_MIN_CHARS = 24
_LARK_MCP_ENTRY = "node_modules/@larksuiteoapi/lark-mcp/dist/cli.js"

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_NEVER_REDIRECT_SCHEMES = frozenset(
    {"http", "https", "javascript", "data", "vbscript", "file"}
    | {"blob", "about", "ftp", "ws", "wss"}
)

_BRAND_HOSTS = {
    "feishu": ("https://open.feishu.cn", "https://accounts.feishu.cn"),
    "lark": ("https://open.larksuite.com", "https://accounts.larksuite.com"),
}


class Brand(StrEnum):
    FEISHU = "feishu"
    LARK = "lark"


class EndpointAuth(StrEnum):
    """What an MCP endpoint does with a request that carries no credential."""

    OAUTH = "oauth"  # answer 401 so that OAuth-capable clients log in by themselves
    LOGIN_LINK = "login_link"  # open an anonymous session whose tool calls answer a login link


class TokenApi(StrEnum):
    """Which generation of Feishu's OAuth token endpoint to call."""

    V2 = "v2"
    V3 = "v3"


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    TEXT = "text"


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the setting."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, frozen=False
    )

    # Feishu app
    app_id: str = Field("", description="Feishu/Lark app id (cli_...) used for OAuth and children")
    app_secret: SecretStr = Field(SecretStr(""), description="Feishu/Lark app secret")
    brand: Brand = Field(Brand.FEISHU, description="feishu or lark: picks the default hosts")
    open_base_url: str = Field(
        "", description="OpenAPI base URL; empty means the brand's (https://open.feishu.cn)"
    )
    accounts_base_url: str = Field(
        "", description="Login base URL; empty means the brand's (https://accounts.feishu.cn)"
    )
    token_api: TokenApi = Field(
        TokenApi.V2,
        description="OAuth token endpoint: v2 (open host) or v3 (accounts host, v2's successor)",
    )
    token_url: str = Field(
        "",
        description="OAuth token URL; empty means the one token_api names on the brand's host",
    )
    scopes: list[str] = Field(
        default_factory=list,
        description="OAuth scopes to ask for; offline_access is always added",
    )

    # Where the gateway is
    public_url: str = Field(
        "", description="Public base URL clients and Feishu see, e.g. https://gate.example.com"
    )
    host: str = Field("127.0.0.1", description="Address the gateway listens on")
    port: int = Field(8080, ge=0, le=65535, description="Port the gateway listens on")
    data_dir: Path = Field(
        Path("./data"), description="Directory for the store, keys and per-user child homes"
    )
    encryption_key: SecretStr = Field(
        SecretStr(""),
        description="Base64 of 32 bytes sealing tokens; empty means key files in <data_dir>/keys",
    )
    previous_encryption_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Old base64 keys that only open records, while `rotate-key` re-seals them",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser Origins allowed on /mcp and /sse besides the public URL and loopback",
    )

    # lark-mcp children
    node_path: str = Field("node", description="Node.js executable that runs lark-mcp")
    lark_mcp_cli: Path | None = Field(
        None, description="Path to lark-mcp's dist/cli.js; empty means node_modules's copy"
    )
    child_transport: Literal["sse", "streamable"] = Field(
        "sse",
        description="How the gateway talks to children: sse (one connection per child and "
        "token, half the child CPU per call) or streamable (a POST per call)",
    )
    lark_tools: str = Field(
        "preset.default", description="lark-mcp -t: a preset or comma-separated tool names"
    )
    lark_language: str = Field("en", description="lark-mcp -l: en or zh")
    lark_tool_name_case: str = Field("snake", description="lark-mcp -c: snake, camel, kebab, dot")
    child_heap_mb: int = Field(256, ge=64, description="V8 old-space cap for each child, in MiB")
    child_v8_flags: list[str] = Field(
        # A young generation capped at 2 MiB semi-spaces saves each child ~30 MiB of RSS with
        # no measurable cost per call (benchmarks/child_memory.py).
        default_factory=lambda: ["--max-semi-space-size=2"],
        description="V8 flags put on each child's node command line (a JSON list)",
    )
    max_instances: int = Field(
        20, ge=1, description="Most user children running at once; warm spares come on top"
    )
    warm_spares: int = Field(1, ge=0, description="Started children kept ready for newcomers")
    idle_timeout: float = Field(
        1800.0, gt=0, description="Seconds a user child may sit idle before it is stopped"
    )
    stop_grace: float = Field(5.0, gt=0, description="Seconds between SIGTERM and SIGKILL")
    start_timeout: float = Field(30.0, gt=0, description="Seconds a child may take to get ready")
    health_interval: float = Field(10.0, gt=0, description="Seconds between child health probes")
    restart_limit: int = Field(
        5, ge=1, description="Crashes within restart_window before a child is marked failed"
    )
    restart_window: float = Field(300.0, gt=0, description="Window for restart_limit, seconds")
    restart_backoff: float = Field(0.5, ge=0, description="First restart delay; doubles per crash")
    child_timeout: float = Field(120.0, gt=0, description="Seconds a child may take to answer")
    busy_retry_after: int = Field(5, ge=1, description="Retry-After seconds when at the cap")

    # Sessions and limits
    max_connections: int = Field(
        2000, ge=10, description="Most client connections at once; more get HTTP 503"
    )
    max_head_bytes: int = Field(
        16384, ge=1024, description="Largest request head (request line and headers); more: 431"
    )
    head_timeout: float = Field(
        10.0, gt=0, description="Seconds a client may take to send a request's headers"
    )
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds a client may take to send a request body"
    )
    max_body_bytes: int = Field(102_400, ge=1024, description="Largest accepted request body")
    session_idle_timeout: float = Field(
        3600.0, gt=0, description="Seconds before an unused MCP session is forgotten"
    )
    client_keepalive: float = Field(
        30.0, gt=0, description="Seconds an idle client connection is kept open for reuse"
    )
    keepalive_interval: float = Field(
        15.0, gt=0, description="Seconds between keep-alive comments on idle event streams"
    )
    login_state_ttl: float = Field(600.0, gt=0, description="Seconds a login link stays valid")
    refresh_margin: float = Field(
        300.0, ge=0, description="Refresh an access token this many seconds before it expires"
    )
    feishu_timeout: float = Field(15.0, gt=0, description="Seconds for one call to Feishu")
    refresh_answer_wait: float = Field(
        120.0,
        gt=0,
        description="Seconds a refresh waits in the background for Feishu's late answer",
    )
    refresh_attempts: int = Field(
        4, ge=1, description="Tries of one token refresh while Feishu fails for a passing reason"
    )
    refresh_backoff: float = Field(
        0.5, ge=0, description="Seconds before a refresh's second try; doubles per try, jittered"
    )
    refresh_backoff_cap: float = Field(
        8.0, ge=0, description="Longest wait between two tries of a refresh, in seconds"
    )
    token_calls_per_second: int = Field(
        20, ge=1, le=50, description="Most OAuth calls a second to Feishu (Feishu allows 50/app)"
    )
    token_calls_per_minute: int = Field(
        600, ge=1, le=1000, description="Most OAuth calls a minute to Feishu (it allows 1000/app)"
    )
    renewal_share: float = Field(
        0.5, gt=0, le=1, description="Share of those calls background renewals may use at most"
    )
    renewal_before: float = Field(
        172800.0, gt=0, description="Renew an idle user's refresh token this long before expiry, s"
    )
    renewal_spread: float = Field(
        21600.0, ge=0, description="Spread idle users' renewals over this many seconds (jitter)"
    )
    renewal_interval: float = Field(
        300.0, gt=0, description="Seconds between passes of the background renewal job"
    )
    renewal_concurrency: int = Field(
        4, ge=1, description="Renewals the background job runs at the same time"
    )
    reap_interval: float = Field(30.0, gt=0, description="Seconds between idle sweeps")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    # LarkGate as an OAuth 2.1 authorization server, and personal access keys
    mcp_auth: EndpointAuth = Field(
        EndpointAuth.OAUTH,
        description="/mcp without a credential: oauth (401, clients log in) or login_link",
    )
    sse_auth: EndpointAuth = Field(
        EndpointAuth.LOGIN_LINK,
        description="/sse without a credential: oauth (401, clients log in) or login_link",
    )
    oauth_access_token_ttl: float = Field(
        3600.0, gt=0, description="Seconds an access token issued to an MCP client stays valid"
    )
    oauth_refresh_token_ttl: float = Field(
        30 * 86400.0,
        gt=0,
        description="Seconds an unused refresh token stays valid; use rotates it",
    )
    oauth_code_ttl: float = Field(
        60.0, gt=0, le=600, description="Seconds a single-use authorization code stays valid"
    )
    oauth_unused_client_ttl: float = Field(
        86400.0,
        gt=0,
        description="Seconds a registered client that never logged anyone in is kept",
    )
    oauth_redirect_schemes: list[str] = Field(
        default_factory=list,
        description="Private-use redirect URI schemes accepted besides https and loopback http",
    )
    auth_rate_limit: int = Field(
        30, ge=1, description="Requests a minute one address may make to each login/OAuth endpoint"
    )
    web_session_ttl: float = Field(
        3600.0, gt=0, description="Seconds a browser login to the access key page lasts"
    )
    max_access_keys: int = Field(
        10, ge=1, description="Most personal access keys one user may hold"
    )

    # Operations: logs, admin, monitoring, alerts, backups
    log_format: LogFormat = Field(
        LogFormat.AUTO, description="auto (JSON unless stderr is a terminal), json or text"
    )
    admin_token: SecretStr = Field(
        SecretStr(""),
        description="Token for /admin and the admin CLI; empty means <data_dir>/admin.token",
    )
    monitor_interval: float = Field(
        10.0, gt=0, description="Seconds between CPU/memory samples and alert checks"
    )
    sample_history: int = Field(
        90, ge=2, description="Samples kept per instance for the admin page's charts"
    )
    instance_memory_limit_mb: int = Field(
        512, ge=0, description="RSS in MiB above which an instance raises an alert; 0 is off"
    )
    feishu_probe_interval: float = Field(
        60.0, ge=0, description="Seconds between checks that Feishu is reachable; 0 is off"
    )
    alert_feishu_webhook: SecretStr = Field(
        SecretStr(""), description="Feishu/Lark custom bot webhook URL that receives alerts"
    )
    alert_feishu_secret: SecretStr = Field(
        SecretStr(""), description="Signing secret of that bot; empty sends unsigned"
    )
    alert_webhook_url: SecretStr = Field(
        SecretStr(""), description="Generic webhook URL that receives alerts as JSON"
    )
    alert_webhook_secret: SecretStr = Field(
        SecretStr(""), description="HMAC-SHA256 key for the generic webhook's signature header"
    )
    alert_repeat_after: float = Field(
        3600.0, gt=0, description="Seconds before a still-true alert is sent again"
    )
    alert_max_per_hour: int = Field(
        30, ge=1, description="Most alerts sent in an hour; the rest are counted, not sent"
    )
    alert_failure_burst: int = Field(
        5, ge=1, description="Login or refresh failures within alert_burst_window that alert"
    )
    alert_burst_window: float = Field(
        300.0, gt=0, description="Window for alert_failure_burst, in seconds"
    )
    backup_dir: Path | None = Field(
        None, description="Where scheduled backups go; empty means <data_dir>/backups"
    )
    backup_interval: float = Field(
        86400.0, ge=0, description="Seconds between scheduled backups; 0 is off"
    )
    backup_keep: int = Field(7, ge=1, description="Scheduled backups kept; older ones are deleted")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = os.environ.get(CONFIG_FILE_ENV)
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path)))
        return tuple(sources)

    @field_validator("public_url", "open_base_url", "accounts_base_url", "token_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("oauth_redirect_schemes")
    @classmethod
    def _schemes(cls, value: list[str]) -> list[str]:
        schemes = [v.strip().lower().rstrip(":") for v in value if v.strip()]
        for scheme in schemes:
            # Web, script and data schemes would let a registration send codes to a page.
            if scheme in _NEVER_REDIRECT_SCHEMES or not _SCHEME.fullmatch(scheme):
                raise ValueError(f"{scheme!r} cannot be a private-use redirect scheme")
        return schemes

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, value: SecretStr) -> SecretStr:
        if 0 < len(value.get_secret_value()) < ADMIN_TOKEN_MIN_CHARS:
            raise ValueError(f"must be at least {ADMIN_TOKEN_MIN_CHARS} characters")
        return value

    @field_validator("lark_language")
    @classmethod
    def _language(cls, value: str) -> str:
        if value not in ("en", "zh"):
            raise ValueError("must be en or zh")
        return value

    @field_validator("lark_tool_name_case")
    @classmethod
    def _case(cls, value: str) -> str:
        if value not in ("snake", "camel", "kebab", "dot"):
            raise ValueError("must be snake, camel, kebab or dot")
        return value

    @model_validator(mode="after")
    def _brand_defaults(self) -> Settings:
        open_base, accounts_base = _BRAND_HOSTS[self.brand.value]
        if not self.open_base_url:
            self.open_base_url = open_base
        if not self.accounts_base_url:
            self.accounts_base_url = accounts_base
        if not self.token_url:
            if self.token_api is TokenApi.V3:
                self.token_url = f"{self.accounts_base_url}/oauth/v3/token"
            else:
                self.token_url = f"{self.open_base_url}/open-apis/authen/v2/oauth/token"
        return self

    # Derived values, computed once from the settings above.

    @property
    def redirect_uri(self) -> str:
        """The one redirect_uri sent in both the authorize and the token call."""
        return f"{self.public_url}/oauth/callback"

    @property
    def authorize_url(self) -> str:
        return f"{self.accounts_base_url}/open-apis/authen/v1/authorize"

    @property
    def oauth_scopes(self) -> list[str]:
        scopes = [s for s in self.scopes if s and s != "offline_access"]
        return [*dict.fromkeys(scopes), "offline_access"]

    @property
    def keys_dir(self) -> Path:
        """Key files ``<kid>.key`` and the ``primary`` pointer, when no key setting is given."""
        return self.data_dir / "keys"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "larkgate.db"

    @property
    def lark_mcp_cli_path(self) -> Path:
        if self.lark_mcp_cli is not None:
            return self.lark_mcp_cli
        # The working directory's copy first, then the one beside a source checkout.
        for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
            candidate = base / _LARK_MCP_ENTRY
            if candidate.is_file():
                return candidate
        return Path.cwd() / _LARK_MCP_ENTRY

    @property
    def backup_path(self) -> Path:
        return self.backup_dir if self.backup_dir is not None else self.data_dir / "backups"

    @property
    def local_url(self) -> str:
        """How a process on this machine reaches the gateway (the admin CLI)."""
        wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104
        host = wildcard.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def require_for_serving(self) -> None:
        """Refuse to serve half-configured: raise ConfigError naming the first missing setting."""
        for name in ("app_id", "app_secret", "public_url"):
            value = getattr(self, name)
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if not text:
                raise ConfigError(f"setting {ENV_PREFIX}{name.upper()} is required: {_help(name)}")


def _help(name: str) -> str:
    return Settings.model_fields[name].description or ""


def load_settings(**overrides: Any) -> Settings:
    """Read settings; turn pydantic's report into one line naming the setting."""
    toml_keys = _check_config_file()
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "settings"
        where = f"{name} in {os.environ[CONFIG_FILE_ENV]}" if name in toml_keys else None
        if first["type"] == "extra_forbidden":
            raise ConfigError(
                f"unknown setting {where or ENV_PREFIX + name.upper()}: see `larkgate settings`"
            ) from None
        raise ConfigError(
            f"setting {where or ENV_PREFIX + name.upper()} is invalid: {first['msg']}"
        ) from None


def _check_config_file() -> set[str]:
    """The keys of the TOML file named by LARKGATE_CONFIG; a missing or broken file is an
    error naming it, never silently skipped."""
    path = os.environ.get(CONFIG_FILE_ENV)
    if not path:
        return set()
    try:
        with open(path, "rb") as f:
            return set(tomllib.load(f))
    except OSError as exc:
        raise ConfigError(f"{CONFIG_FILE_ENV}={path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{CONFIG_FILE_ENV}={path} is not valid TOML: {exc}") from None


def describe_settings() -> list[tuple[str, str, str]]:
    """(environment variable, default, help) for every setting, for --help and the README."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default if field.default_factory is None else field.default_factory()  # type: ignore[call-arg]
        if isinstance(default, SecretStr):
            default = ""
        shown = json.dumps(default) if isinstance(default, list) and default else str(default)
        rows.append((f"{ENV_PREFIX}{name.upper()}", shown, field.description or ""))
    return rows
