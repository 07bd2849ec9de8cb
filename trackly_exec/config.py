"""``trackly.toml``, parsed into pydantic models.

Every setting has a default and a description. Environment variables override the file:
``TRACKLY_<SECTION>__<KEY>`` (for example ``TRACKLY_MONGO__URI=mongodb://db1:27017``).
Secrets are :class:`~pydantic.SecretStr`: they print as ``**********`` and are never logged.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from trackly_exec.errors import ConfigError

#: A raw configuration table (``[drivers.NAME]``, a sending list's ``driver_settings``): its keys are a driver's
#: settings. (Re-exported by ``trackly_exec.store.documents`` with the other named shapes.)
ConfigTable: TypeAlias = dict[str, Any]

DEFAULT_CONFIG_FILE = "trackly.toml"


#: A host name (RFC 1123 labels, an optional final dot).
_HOST_NAME = re.compile(r"(?i)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?")

#: The longest a duration setting may be (a year, in the unit its name gives): anything longer is a typo, and
#: ``inf`` or ``1e308`` would overflow the timers built from it.
_LONGEST = {"_seconds": 365 * 86400.0, "_minutes": 365 * 1440.0, "_hours": 365 * 24.0}


def _timeout(driver: ConfigTable) -> float:
    """A driver table's ``timeout_seconds`` as far as it is a sensible number (the driver's own settings report
    anything else, naming the key)."""
    try:
        value = float(driver.get("timeout_seconds", 30.0))
    except (TypeError, ValueError):
        return 30.0
    return value if math.isfinite(value) and 0 < value <= 3600 else 30.0


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _duration_at_most_a_year(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, float) and info.field_name:
            for suffix, longest in _LONGEST.items():
                if info.field_name.endswith(suffix) and value > longest:
                    raise ValueError(f"at most {longest:g} (a year)")
        return value


class DaemonConfig(Section):
    data_dir: Path = Field(Path(".trackly"), description="Where the embedded store keeps its data, pid and log files.")
    instance_name: str = Field("", description="Name of this process in claims, logs and metrics (default host-pid).")
    shutdown_grace_seconds: float = Field(
        20.0, ge=0, description="On SIGTERM, time to finish or release in-flight batches before exiting."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Minimum log level.")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: readable on a TTY, JSON lines otherwise (journald)."
    )

    clock: Literal["store", "local"] = Field(
        "store",
        description="Whose clock times every decision (claim ages, staleness, quiet hours, schedules, backoffs): "
        '"store" (the store\'s, so daemons on VMs whose clocks disagree still agree) or "local" (this host\'s).',
    )
    clock_sync_seconds: float = Field(
        60.0, gt=0, description='How often the offset to the store\'s clock is measured again (clock = "store").'
    )
    clock_skew_warn_seconds: float = Field(
        1.0, gt=0, description="Warn (log and alert) when this host's clock is off the store's by more than this."
    )

    def resolved_instance_name(self) -> str:
        return self.instance_name or f"{socket.gethostname()}-{os.getpid()}"


class MongoConfig(Section):
    uri: SecretStr = Field(
        SecretStr("embedded"),
        description='"embedded" starts nx-27017 under data_dir; any mongodb:// URI means a real MongoDB.',
    )
    database: str = Field("trackly", min_length=1, description="Database name.")
    embedded_port: int = Field(0, ge=0, le=65535, description="Port of the embedded server (0: a free port).")
    embedded_in_memory: bool = Field(False, description="Embedded server keeps data in memory only (tests, benches).")
    connect_timeout_seconds: float = Field(15.0, gt=0, description="How long to wait for the store at start-up.")
    write_concern: str = Field(
        "majority",
        min_length=1,
        description='Write concern "w" of every write: "majority" (survives a replica-set failover), or a number.',
    )
    retry_writes: bool = Field(
        True, description="Retry a write once after a network error or a primary step-down (MongoDB retryable writes)."
    )
    embedded_restart_attempts: int = Field(
        5,
        ge=0,
        description="Restarts of a dead embedded store in a row before the daemon exits non-zero (for systemd to "
        "restart the whole unit).",
    )

    @property
    def write_concern_w(self) -> int | str:
        w = self.write_concern.strip()
        return int(w) if w.isascii() and w.isdigit() else w

    @property
    def embedded(self) -> bool:
        return self.uri.get_secret_value().strip() == "embedded"

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: SecretStr) -> SecretStr:
        text = v.get_secret_value().strip()
        if text != "embedded" and not text.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError('must be "embedded" or a mongodb:// (mongodb+srv://) URI')
        if text.startswith("mongodb://"):  # (a mongodb+srv:// URI is resolved by DNS: checked when connecting)
            from pymongo.errors import PyMongoError
            from pymongo.uri_parser import parse_uri

            try:
                parse_uri(text)
            except (ValueError, PyMongoError) as exc:
                raise ValueError(f"not a valid MongoDB URI: {_without_secrets(str(exc), text)}") from None
        return v

    @field_validator("write_concern")
    @classmethod
    def _write_concern(cls, v: str) -> str:
        w = v.strip()
        if not (w.isascii() and (w.isdigit() or w.replace("_", "").replace("-", "").isalnum())):
            raise ValueError('must be "majority", a number of members, or a tag set name (ASCII letters, digits, -, _)')
        return w


class RedisConfig(Section):
    url: SecretStr | None = Field(
        None,
        description="redis:// URL shared by every executor process; without it an in-process rate limiter is used.",
    )
    socket_timeout_seconds: float = Field(2.0, gt=0, description="Timeout of one Redis command.")

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a URL with a scheme: redis://, rediss:// or unix://")
        if v is not None:
            text = v.get_secret_value().strip()
            try:
                parts = urlsplit(text)
                parts.port  # noqa: B018  (raises for a port out of range or not a number)
            except ValueError as exc:  # "Port out of range 0-65535", "Invalid IPv6 URL"
                raise ValueError(f"not a valid Redis URL: {_without_secrets(str(exc), text)}") from None
            if parts.scheme != "unix" and not parts.hostname:
                raise ValueError("not a valid Redis URL: no host")
        return v


class ExecutorConfig(Section):
    enabled: bool = Field(True, description="Run the message executor in this process.")
    poll_interval_seconds: float = Field(0.5, gt=0, description="Coordinator poll interval when the queue is idle.")
    claim_batch_size: int = Field(1000, ge=1, le=10000, description="Messages claimed per batch.")
    workers_per_list: int = Field(6, ge=1, description="Concurrent workers per sending list.")
    pool_size: int = Field(30, ge=1, description="Concurrent provider requests across all lists.")
    stale_after_minutes: float = Field(30.0, gt=0, description="A message this late past its sendtime is STALE.")
    claim_ttl_minutes: float = Field(
        10.0, gt=0, description="Claims older than this are recovered; must exceed the longest provider call."
    )
    recovery_interval_seconds: float = Field(30.0, gt=0, description="How often stale claims are swept.")
    member_ttl_seconds: float = Field(
        10.0,
        gt=0,
        description="An executor process counts as live this long after its last heartbeat in Redis; the others "
        "then take its share of the queue.",
    )
    steal_after_seconds: float = Field(
        30.0,
        ge=0,
        description="When this process's share of the queue has been empty this long while other shares have due "
        "messages (a stuck peer), it claims from the whole queue.",
    )
    rate_limit_wait_seconds: float = Field(
        60.0, gt=0, description="Longest wait for rate-limit tokens before RATE_LIMIT_TIMEOUT."
    )
    billing_backoff_minutes: float = Field(5.0, gt=0, description="Backoff of a billing-blocked message.")
    billing_ttl_minutes: float = Field(
        60.0, gt=0, description="Billing-blocked this long after the first block: dead-letter."
    )
    retry_max_attempts: int = Field(5, ge=1, description="Provider attempts for transient failures.")
    retry_budget_seconds: float = Field(120.0, gt=0, description="Total time spent retrying one request.")
    retry_initial_backoff_seconds: float = Field(0.5, ge=0, description="First retry delay (exponential, jittered).")
    blocked_words: list[str] = Field(default_factory=list, description="Global blocked words (whole word, any case).")
    error_burst_threshold: int = Field(
        20, ge=1, description="Provider errors on one list within a minute that raise a provider-error-burst event."
    )
    rate_limit_chunk_seconds: float = Field(
        0.05,
        gt=0,
        le=5,
        description="Rate-limited lists send in chunks of this many seconds of tokens (pacing); any one second of a "
        "list's sends holds at most its rate plus one chunk.",
    )
    rate_limit_round_seconds: float = Field(
        0.2,
        gt=0,
        le=5,
        description="Rate-limited lists take tokens, bill, re-check and record this many seconds of chunks at once "
        "(each chunk still admitted and marked with its send intent right before it goes): fewer store round trips "
        "per message; the send-time re-check is at most this old when a round's last chunk goes.",
    )
    rate_limit_burst_seconds: float = Field(
        0.0, ge=0, le=1, description="Tokens a list may send ahead of its pace after an idle period (burst tolerance)."
    )
    rate_limit_late_seconds: float = Field(
        0.05,
        gt=0,
        description="Ignored; kept so that configuration files that set it still load. A chunk woken late no longer "
        "takes a new slot: it is admitted to the list's send window of the last second (every process's sends), and "
        "waits only while that second is full (rate plus one chunk).",
    )
    rate_limit_claim_seconds: float = Field(
        2.0, gt=0, description="A rate-limited list claims at most this many seconds of tokens per batch."
    )
    provider_hold_seconds: float = Field(
        5.0,
        gt=0,
        description="Transient provider errors (429, 5xx before acceptance) that outlast the retries hold "
        "the list's messages this long at first (at least Retry-After), then as long as they are already late, up to "
        "provider_hold_max_seconds; they are dead-lettered STALE only stale_after_minutes after they were due.",
    )
    provider_hold_max_seconds: float = Field(
        60.0, gt=0, description="Longest single provider-storm hold of a list's messages (see provider_hold_seconds)."
    )
    rate_penalty_max: float = Field(
        4.0, ge=1, description="Largest slow-down factor of a list's send interval after provider errors (429, 5xx)."
    )
    rate_penalty_decay_seconds: float = Field(
        30.0, gt=0, description="A provider-error slow-down expires this long after the last error."
    )
    list_cache_seconds: float = Field(
        5.0, ge=0, description="How long sending-list documents (and their driver) are cached by the executor."
    )


class SchedulerConfig(Section):
    enabled: bool = Field(True, description="Run the campaign scheduler in this process.")
    poll_interval_seconds: float = Field(5.0, gt=0, description="How often due campaigns are looked for.")
    max_lateness_minutes: float = Field(
        30.0, gt=0, description="An occurrence later than this (after downtime) is skipped and reported."
    )
    evaluation_batch_size: int = Field(2000, ge=100, description="Contacts read and queued per batch.")
    max_concurrent_evaluations: int = Field(
        2, ge=1, description="Executions evaluated at the same time by this process."
    )
    evaluation_lease_seconds: float = Field(
        60.0, gt=0, description="An execution whose evaluator has not reported for this long is resumed by another."
    )
    learned_min_sends: int = Field(
        200, ge=1, description="Learned variants use the percentage split until every variant has this many sends."
    )


class HttpConfig(Section):
    enabled: bool = Field(True, description="Serve the admin API, webhooks, links, dashboard and metrics.")
    host: str = Field("127.0.0.1", description="Listen address.")
    port: int = Field(8080, ge=0, le=65535, description="Listen port (0: a free port).")
    public_url: str = Field(
        "http://127.0.0.1:8080", description="URL providers and browsers reach this server at (webhook signatures)."
    )
    short_base: str = Field("", description="Base of tracked short links (default: public_url + '/l').")
    api_tokens: list[SecretStr] = Field(default_factory=list, description="Bearer tokens accepted by the admin API.")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest accepted request body.")
    operator_auth: bool = Field(
        True,
        description="The dashboard, its JSON and /metrics need a token (api_tokens or dashboard_tokens: Bearer "
        "header, or the dashboard's login cookie); false serves them openly (only on a private operator listener).",
    )
    dashboard_tokens: list[SecretStr] = Field(
        default_factory=list, description="Read-only tokens: open the dashboard and /metrics, not the admin API."
    )
    operator_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="A separate listener for the admin API, dashboard and metrics; the main "
        "one (host:port) then serves only the public parts: provider webhooks, /l/ links and /healthz.",
    )
    operator_host: str = Field("127.0.0.1", description="Listen address of the operator listener (operator_port).")
    metrics_refresh_seconds: float = Field(
        30.0,
        gt=0,
        description="How often the store's figures of /metrics (queue, sent, delivered, failed, clicks) are counted "
        "in the background; a scrape exports the last ones with their age and never waits for a count. A count "
        "that took d seconds is not repeated sooner than 20 d later (at most 5 % of the store's time).",
    )
    dashboard_refresh_seconds: float = Field(
        5.0,
        gt=0,
        description="While a live dashboard is open (polled in the last minute), the same background count runs "
        "this often instead (metrics_refresh_seconds if that is shorter), with the dashboard's "
        "campaigns, outbox and alerts: one count per interval however many dashboards poll.",
    )

    @field_validator("public_url", "short_base")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        if v and not has_scheme(v, ("http", "https")):
            raise ValueError("must be a URL with a scheme and a host: http:// or https://")
        host = urlsplit(v).hostname or ""
        if "_" in host:  # not a host name (RFC 1123); Twilio refuses a StatusCallback on such a host (every send)
            raise ValueError(f"the host {host!r} contains '_': host names take letters, digits, '-' and '.'")
        if "@" in urlsplit(v).netloc:
            raise ValueError(
                "must not carry user:password@: it would be written into every tracked link and provider callback URL"
            )
        return v.rstrip("/")

    @property
    def short_link_base(self) -> str:
        return self.short_base or f"{self.public_url}/l"

    @property
    def admin_url(self) -> str:
        """Where a client on this host reaches the admin API: the operator listener when ``operator_port`` is set
        (the main one then serves only the public parts), else ``host:port``; a wildcard address as loopback."""
        host, port = (
            (self.operator_host, self.operator_port) if self.operator_port is not None else (self.host, self.port)
        )
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class TrackingConfig(Section):
    outbox_poll_seconds: float = Field(1.0, gt=0, description="Customer-webhook outbox poll interval.")
    outbox_max_age_hours: float = Field(24.0, gt=0, description="Give up delivering a customer webhook after this.")
    outbox_timeout_seconds: float = Field(10.0, gt=0, description="Timeout of one customer-webhook POST.")
    outbox_concurrency: int = Field(20, ge=1, description="Concurrent customer-webhook deliveries.")
    bot_click_seconds: float = Field(
        5.0, ge=0, description="A click this soon after delivery (or send) is flagged as a bot."
    )
    ip_hash_salt: SecretStr = Field(SecretStr("trackly"), description="Salt for hashing clicker IP addresses.")
    outbox_initial_backoff_seconds: float = Field(
        10.0, gt=0, description="First retry delay of a failed customer webhook (doubles per attempt, jittered)."
    )
    outbox_max_backoff_seconds: float = Field(
        3600.0, gt=0, description="Longest delay between customer-webhook retries."
    )
    outbox_per_account_concurrency: int = Field(
        4,
        ge=1,
        description="Concurrent customer-webhook deliveries to one account (a dead endpoint cannot take every slot).",
    )
    webhook_max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest provider webhook body accepted (larger: HTTP 413)."
    )
    trust_forwarded_for: bool = Field(
        False, description="Take the clicker IP from X-Forwarded-For (only behind a trusted reverse proxy)."
    )
    webhook_url_allowlist: list[str] = Field(
        default_factory=list,
        description='Internal receivers a customer webhook URL may point at (CIDRs like "10.1.2.0/24" or exact host '
        "names); every other loopback, private, link-local, multicast or reserved address is refused.",
    )

    @field_validator("webhook_url_allowlist")
    @classmethod
    def _allowlist(cls, v: list[str]) -> list[str]:
        """Each entry a CIDR or address, or a host name: a malformed CIDR ("10.0.0.0/33") was taken for a host name
        and allowed nothing, in silence."""
        for i, entry in enumerate(v):
            text = entry.strip()
            if not text:
                raise ValueError(f"entry {i} is empty")
            if text != entry:
                raise ValueError(f"entry {i} ({entry!r}) has spaces around it")
            if "/" in text or text.replace(".", "").isdigit() or ":" in text:
                try:
                    ipaddress.ip_network(text, strict=False)
                except ValueError as exc:
                    raise ValueError(f"entry {i} ({entry!r}) is not a network: {exc}") from None
            elif not re.fullmatch(
                r"(?i)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?", text
            ):
                raise ValueError(f"entry {i} ({entry!r}) is neither a network (CIDR) nor a host name")
        return v


class ReconcileConfig(Section):
    enabled: bool = Field(True, description="Ask providers what became of NO_RESPONSE (ambiguous) messages.")
    interval_seconds: float = Field(10.0, gt=0, description="How often due ambiguous messages are looked for.")
    batch_size: int = Field(500, ge=1, le=10000, description="Ambiguous messages taken per pass.")
    concurrency: int = Field(4, ge=1, description="Look-up requests in flight per driver.")
    backoff_initial_seconds: float = Field(
        60.0,
        gt=0,
        description="First delay before asking again about a message the provider could not settle "
        "(doubles per look-up, jittered).",
    )
    backoff_max_seconds: float = Field(1800.0, gt=0, description="Longest delay between look-ups of one message.")
    max_age_hours: float = Field(
        48.0,
        gt=0,
        description="Stop asking this long after the send attempt: the message stays NO_RESPONSE "
        "(a delivery report still resolves it).",
    )
    lease_seconds: float = Field(
        120.0, gt=0, description="A pass holds the messages it looks up this long (several daemons never ask twice)."
    )


class AlertsConfig(Section):
    discord_webhook_url: SecretStr | None = Field(None, description="Discord webhook URL for alerts (off when unset).")
    min_interval_seconds: float = Field(60.0, ge=0, description="Same alert key at most once per interval.")
    error_rate_threshold: float = Field(0.2, ge=0, le=1, description="Failure share over a minute that alerts.")

    @field_validator("discord_webhook_url")
    @classmethod
    def _url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        text = v.get_secret_value()
        if not has_scheme(text, ("https", "http")):
            raise ValueError("must be a URL with a scheme: https://discord.com/api/webhooks/...")
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 (raises on a port that is no number)
        except ValueError:
            raise ValueError("is not a valid URL (host or port)") from None
        if not parts.hostname or any(ch.isspace() for ch in text) or "@" in parts.netloc:
            raise ValueError("is not a valid URL: a host name, no spaces, no user:password@")
        return v


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="TRACKLY_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    daemon: DaemonConfig = Field(default_factory=DaemonConfig, description="Process settings.")
    mongo: MongoConfig = Field(default_factory=MongoConfig, description="MongoDB store.")
    redis: RedisConfig = Field(default_factory=RedisConfig, description="Redis (cross-process rate limiting).")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig, description="The message executor.")
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig, description="The campaign scheduler.")
    http: HttpConfig = Field(default_factory=HttpConfig, description="HTTP server.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Tracking and customer webhooks.")
    alerts: AlertsConfig = Field(default_factory=AlertsConfig, description="Alerting.")
    reconcile: ReconcileConfig = Field(
        default_factory=ReconcileConfig, description="Reconciliation of ambiguous (NO_RESPONSE) messages."
    )
    drivers: dict[str, ConfigTable] = Field(
        default_factory=dict,
        description=(
            "Driver instances by name: [drivers.NAME] with `driver = ENTRY_POINT` (default NAME) and its settings."
        ),
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init kwargs carry the TOML file's content; the environment overrides it.
        return (env_settings, init_settings)

    @field_validator("drivers")
    @classmethod
    def _driver_urls(cls, v: dict[str, ConfigTable]) -> dict[str, ConfigTable]:
        bad = [
            name
            for name, values in v.items()
            if isinstance(values, dict)
            and "base_url" in values
            and not has_scheme(str(values["base_url"]), ("http", "https"))
        ]
        if bad:
            raise ValueError(f"base_url of {', '.join(bad)} must be a URL with a scheme: http:// or https://")
        return v

    @model_validator(mode="after")
    def _claim_outlives_calls(self) -> Settings:
        # The claim must outlive the longest provider call or another process could re-send it.
        longest = max((_timeout(v) for v in self.drivers.values() if isinstance(v, dict)), default=30.0)
        if self.executor.claim_ttl_minutes * 60 <= longest * self.executor.retry_max_attempts:
            raise PydanticCustomError(
                "claim_ttl",
                "executor.claim_ttl_minutes must exceed the longest provider call "
                "(driver timeout_seconds x retry_max_attempts)",
            )
        return self

    def driver_instances(self) -> dict[str, tuple[str, ConfigTable]]:
        """``{instance name: (entry-point name, settings)}``."""
        out: dict[str, tuple[str, ConfigTable]] = {}
        for name, values in self.drivers.items():
            values = dict(values)
            out[name] = (str(values.pop("driver", name)), values)
        return out

    def redacted(self) -> ConfigTable:
        """The effective configuration with every secret masked (for printing). ``mongo.uri = "embedded"`` is not a
        secret and shows as is; a URI shows with its password masked (user, hosts and options stay readable)."""
        data: ConfigTable = json.loads(self.model_dump_json())
        data["drivers"] = {name: _redact_driver(values) for name, values in self.drivers.items()}
        data["mongo"]["uri"] = mask_url_password(self.mongo.uri.get_secret_value())
        return cast("ConfigTable", _mask_urls(data))


_SECRETISH = ("key", "token", "secret", "password", "auth")


def has_scheme(url: str, schemes: tuple[str, ...]) -> bool:
    """``url`` starts with one of ``schemes`` followed by ``://`` and a host."""
    scheme, sep, rest = url.strip().partition("://")
    return bool(sep) and scheme.lower() in schemes and bool(rest.split("/", 1)[0])


def _without_secrets(message: str, url: str) -> str:
    """``message`` (a parser's error about ``url``) with the URL's password and query values masked."""
    secrets = []
    try:
        password = urlsplit(url).password
    except ValueError:  # the URL this message is about may not even split
        password = None
    if password:
        secrets.append(password)
    creds = url.partition("://")[2].rpartition("@")[0]
    if ":" in creds:
        secrets.append(creds.partition(":")[2])
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        message = message.replace(secret, "**********")
    return message


#: URI options whose values are secrets (MongoDB: tlsCertificateKeyFilePassword, authMechanismProperties with an
#: AWS session token, ...): masked wherever a URI is shown.
_SECRET_OPTIONS = ("password", "secret", "token", "authmechanismproperties")


def _mask_query(rest: str) -> str:
    """The part after the host list with the values of secret-bearing options masked."""
    path, q, query = rest.partition("?")
    if not q:
        return rest
    pairs = []
    for pair in query.split("&"):
        key, eq, _ = pair.partition("=")
        secret = eq and any(word in key.lower() for word in _SECRET_OPTIONS)
        pairs.append(f"{key}=**********" if secret else pair)
    return f"{path}?{'&'.join(pairs)}"


def mask_url_password(uri: str) -> str:
    """``mongodb://user:pw@host/...`` -> ``mongodb://user:**********@host/...`` (and the values of secret-bearing
    options such as ``tlsCertificateKeyFilePassword``); "embedded" as is."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    creds, at, hosts = rest.rpartition("@")
    if not at:
        return f"{scheme}://{_mask_query(rest)}"
    user, colon, _ = creds.partition(":")
    return f"{scheme}://{user}{':**********' if colon else ''}@{_mask_query(hosts)}"


def env_var(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """The environment variable that set the config key at ``loc`` (``TRACKLY_SECTION__KEY``), if one did."""
    parts = [str(p) for p in loc if not isinstance(p, int)]
    upper = {k.upper(): k for k in os.environ}
    for n in range(len(parts), 0, -1):
        name = "TRACKLY_" + "__".join(p.upper() for p in parts[:n])
        if name in upper:
            return upper[name]
    return None


def _secret_loc(loc: tuple[Any, ...]) -> bool:
    """A key whose value must never be printed: a SecretStr field, or a secret-looking name on the path."""
    model: Any = Settings
    for part in loc:
        if isinstance(part, str) and any(w in part.lower() for w in (*_SECRETISH, "salt", "url", "uri")):
            return True
        fields = getattr(model, "model_fields", None)
        if not fields or not isinstance(part, str) or part not in fields:
            model = None
            continue
        annotation = fields[part].annotation
        if "SecretStr" in repr(annotation):
            return True
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return False


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """Every problem of ``exc`` as ``(dotted key, message)``: the value only for non-secret keys, and the
    environment variable when the value came from one."""
    out: list[tuple[str, str]] = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        key = ".".join(str(p) for p in loc) or "(config)"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown key"
        elif err.get("type") == "claim_ttl":
            key, msg = "executor.claim_ttl_minutes", msg.removeprefix("executor.claim_ttl_minutes ")
        elif "input" in err and _shown(err["input"]) and len(loc) >= 2 and not _secret_loc(loc):
            # a key's own scalar value only: a section of the wrong shape (an array of tables, a list) holds the
            # secrets one level down, and a URL's password is masked
            msg += f" (got {_mask_urls(err['input'])!r})"
        var = env_var(loc if key != "executor.claim_ttl_minutes" else ("executor", "claim_ttl_minutes"))
        if var:
            msg += f" (from environment variable {var})"
        out.append((key, msg))
    return out


def _shown(value: Any) -> bool:
    """Whether a refused value may be quoted in the error: a number, a boolean or a short text, never a table or a
    list (which may hold secrets)."""
    return isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 200)


def _mask_urls(value: Any) -> Any:
    """``value`` with the password of every URL in it masked (a driver's ``base_url`` may carry ``user:password@``),
    and the values of secret-bearing query options (see :func:`mask_url_password`)."""
    if isinstance(value, dict):
        return {k: _mask_urls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_urls(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return mask_url_password(value)
    return value


def _redact_driver(values: ConfigTable) -> ConfigTable:
    return {k: ("**********" if any(s in k.lower() for s in _SECRETISH) and v else v) for k, v in values.items()}


def config_file(path: str | os.PathLike[str] | None = None) -> Path:
    """The configuration file in use: ``path``, else ``$TRACKLY_CONFIG``, else ``./trackly.toml``."""
    return Path(path if path is not None else os.environ.get("TRACKLY_CONFIG", DEFAULT_CONFIG_FILE))


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read ``path`` (default ``$TRACKLY_CONFIG`` or ``./trackly.toml``; a missing default file means all
    defaults) and validate it. Raises :class:`ConfigError` naming the file, the key and the problem."""
    explicit = path is not None or "TRACKLY_CONFIG" in os.environ
    file = config_file(path)
    data: ConfigTable = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", file=str(file)) from exc
        except RecursionError as exc:  # (tomllib recurses into nested arrays and inline tables)
            raise ConfigError("not valid TOML: arrays or tables nested too deeply", file=str(file)) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"not UTF-8 text (byte {exc.start}): a TOML file is UTF-8", file=str(file)) from exc
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc}", file=str(file)) from exc
    elif explicit:
        raise ConfigError("file not found", file=str(file))
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        problems = validation_problems(exc)
        key, msg = problems[0]
        raise ConfigError(msg, file=str(file), key=key, problems=problems) from exc
    except SettingsError as exc:  # an environment variable of a list or table key that is not JSON
        problems = _env_shape_problems() or [("(environment)", str(exc))]
        raise ConfigError(problems[0][1], file=str(file), key=problems[0][0], problems=problems) from exc
    return settings


def _env_shape_problems() -> list[tuple[str, str]]:
    """The ``TRACKLY_SECTION__KEY`` variables of list or table keys whose value is not JSON (pydantic-settings reads
    such a value as JSON only), as ``(dotted key, message)``; the value itself is not repeated (it may be a secret)."""
    out: list[tuple[str, str]] = []
    for name, value in os.environ.items():
        section, sep, key = name.upper().removeprefix("TRACKLY_").partition("__")
        if not name.upper().startswith("TRACKLY_") or not sep:
            continue
        model = Settings.model_fields.get(section.lower())
        fields = getattr(model.annotation, "model_fields", {}) if model is not None else {}
        field = fields.get(key.lower())
        if field is None or not any(t in str(field.annotation) for t in ("list[", "dict[", "Mapping[")):
            continue
        try:
            json.loads(value)
        except ValueError:
            kind = "a list" if "list[" in str(field.annotation) else "a table"
            example = '\'["a", "b"]\'' if kind == "a list" else '\'{"k": "v"}\''
            out.append(
                (
                    f"{section.lower()}.{key.lower()}",
                    f"{kind} given in environment variable {name} must be JSON, e.g. {name}={example}",
                )
            )
    return out
