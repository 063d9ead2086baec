"""One settings object for every process (API, worker, CLI), read from env and `.env`."""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from core.capped import DEFAULT_RESPONSE_MAX_BYTES
from core.temporal_config import TemporalConfigError, load_profile, temporal_secrets

KNOWN_PROVIDERS = ("fal", "replicate", "synth")
# `api` and `worker` refuse this SECRET_KEY, or a shorter one, outside development.
PLACEHOLDER_SECRET_KEY = "change-me-in-production"
MIN_SECRET_KEY_LENGTH = 32


def package_version() -> str:
    """SoundFoundry's installed version; "0" for a bare source tree never installed."""
    try:
        return metadata.version("soundfoundry")
    except metadata.PackageNotFoundError:
        return "0"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# Constant MP3 bitrates a user may choose (the encoder takes more:
# engines.mastering.ENCODABLE_MP3_BITRATES_KBPS).
OFFERED_MP3_BITRATES_KBPS = (96, 128, 160, 192, 224, 256, 320)


class Settings(BaseSettings):
    # An empty variable (FAL_KEY=) means unset, so it cannot put a keyless provider in the chain.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    environment: Literal["development", "test", "staging", "production"] = "development"
    # The installed package's version (pyproject.toml), as /api/health and Sentry report it.
    version: str = Field(default_factory=package_version)

    # Embedded default: SQLite beside the project; production points this at Postgres.
    database_url: str = "sqlite+aiosqlite:///.soundfoundry/soundfoundry.db"
    # Postgres connections per process: a worker runs up to WORKER_MAX_CONCURRENT_ACTIVITIES
    # activities at once, each holding one connection for a moment.
    database_pool_size: int = Field(default=10, ge=1)
    database_max_overflow: int = Field(default=10, ge=0)

    # How to reach Temporal: the Temporal SDK's environment configuration, the variables and
    # `temporal.toml` profiles the `temporal` CLI reads too (core/temporal_config.py).
    # Precedence, highest first: a value passed to Settings(...), the process environment,
    # `.env`, the profile in the TOML file, then these defaults.
    temporal_address: str = "localhost:7233"
    temporal_namespace: str = "default"
    temporal_profile: str | None = None
    temporal_config_file: Path | None = None
    # Temporal Cloud API key; turns TLS on unless TEMPORAL_TLS=false.
    temporal_api_key: SecretStr | None = None
    # None: TLS when a TLS setting or an API key is given, else plaintext.
    temporal_tls: bool | None = None
    temporal_tls_client_cert_path: Path | None = None
    temporal_tls_client_cert_data: str | None = None
    temporal_tls_client_key_path: Path | None = None
    temporal_tls_client_key_data: SecretStr | None = None
    temporal_tls_server_ca_cert_path: Path | None = None
    temporal_tls_server_ca_cert_data: str | None = None
    temporal_tls_server_name: str | None = None
    task_queue: str = "soundfoundry-tracks"
    temporal_ui_url: str = "http://localhost:8233"
    # TrackId/UserId/Provider/JobStatus must be registered on the namespace first.
    search_attributes_enabled: bool = True

    # Storage: "local" keeps objects in a folder and serves them through signed API links.
    storage_backend: Literal["local", "s3"] = "local"
    storage_local_dir: Path = Path(".soundfoundry/objects")
    s3_endpoint: str | None = None
    # Where browsers reach the bucket, if not at S3_ENDPOINT (e.g. MinIO behind compose).
    s3_public_endpoint: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_bucket: str = "soundfoundry"
    s3_region: str = "us-east-1"
    signed_url_ttl_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    public_base_url: str = "http://localhost:8000"
    # Signs local download links; `soundfoundry dev` generates one per checkout.
    secret_key: SecretStr = SecretStr(PLACEHOLDER_SECRET_KEY)

    # Ordered provider chain. The seeds' MUSIC_PROVIDER, when set, is put first.
    music_providers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    music_provider: str | None = None
    fal_key: SecretStr | None = None
    replicate_api_token: SecretStr | None = None
    fal_queue_url: str = "https://queue.fal.run/"
    replicate_base_url: str = "https://api.replicate.com"
    # The model table (README: "Providers and models"); each id must be a known model.
    fal_vocals_model: str = "fal-ai/minimax-music/v2"
    fal_instrumental_model: str = "fal-ai/stable-audio"
    replicate_vocals_model: str = "minimax/music-1.5"
    replicate_instrumental_model: str = "meta/musicgen"
    # Every single call to a provider's API gives up after this long (then our retry
    # policy decides); it stays below the heartbeat timeout.
    provider_request_timeout_s: float = Field(default=15.0, gt=0)
    # /api/health/providers answers from a check at most this old.
    # A provider's audio file larger than this is refused (and never written past it):
    # five minutes of 96 kHz 24-bit stereo WAV, the longest track (300 s) in the largest
    # format a provider sends, is ~173 MB.
    provider_download_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    # Any other answer from a provider's API or its published keys (JSON, a few KB):
    # larger is refused, so a hostile or broken server cannot fill the worker's memory.
    provider_response_max_bytes: int = Field(default=DEFAULT_RESPONSE_MAX_BYTES, ge=64 * 1024)
    # Audio downloads and their redirects must resolve to public addresses; hosts listed
    # here are exempt (the tests' loopback fakes).
    provider_download_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    provider_health_cache_s: float = Field(default=30.0, ge=0)
    # Providers tell us when a job ends (and which job a lost submit answer started) by
    # webhook; submissions carry webhook URLs under PUBLIC_BASE_URL only when this is on,
    # since the providers must be able to reach that address.
    provider_webhooks_enabled: bool = False
    # Replicate's `whsec_...` signing secret. Unset, the API asks Replicate for it once
    # (with REPLICATE_API_TOKEN) and keeps it.
    replicate_webhook_secret: SecretStr | None = None
    # fal signs with ED25519 keys it publishes here; tests point it at the fake.
    fal_webhook_jwks_url: str = "https://rest.alpha.fal.ai/.well-known/jwks.json"
    # A signed delivery whose timestamp is further than this from our clock is refused
    # (a replay, or a clock badly off).
    provider_webhook_tolerance_s: int = Field(default=300, ge=1)
    # Our fal account's user id: fal signs deliveries for every customer with the same
    # keys, so one naming another user is refused. Unset: learned from the first delivery
    # whose run fal confirms to our own key (FAL_KEY).
    fal_webhook_user_id: str | None = None
    # fal has no listing, so without provider webhooks a submit whose answer is lost can
    # never be found: the track falls back while the fal job may run and be billed. The
    # worker refuses to start with fal in the chain and webhooks off unless this is set.
    fal_without_webhooks: bool = False

    # Bounds on spend and waiting, read by the worker when it plans a track.
    max_submissions_per_track: int = Field(default=4, ge=1)
    submit_max_attempts: int = Field(default=3, ge=1)
    poll_max_attempts: int = Field(default=5, ge=1)
    retry_initial_interval_s: float = Field(default=1.0, gt=0)
    retry_max_interval_s: float = Field(default=30.0, gt=0)
    generation_timeout_s: float = Field(default=900.0, gt=0)
    heartbeat_timeout_s: float = Field(default=20.0, gt=0)
    poll_interval_s: float = Field(default=2.0, gt=0)
    # While a submission's webhook is expected, its delivery ends the wait and polls are
    # only the safety net for a lost one: they come this far apart (never closer than
    # POLL_INTERVAL_S).
    provider_webhook_poll_interval_s: float = Field(default=30.0, gt=0)
    # A submit whose answer was lost is looked for (webhook, the provider's listing) for
    # this long before it is declared ambiguous; it is never sent again to that provider.
    submit_resolve_window_s: float = Field(default=30.0, ge=0)
    # Jobs each provider may have running for us at once, across every worker (0: no
    # cap). Tracks beyond it wait in the `provider_queue` step, holding no worker slot.
    fal_max_in_flight: int = Field(default=0, ge=0)
    replicate_max_in_flight: int = Field(default=0, ge=0)
    # An ambiguous submit may have paid for a job we cannot see: go on to the next
    # provider (true: the user gets a track, we may pay twice) or fail the track (false).
    ambiguous_submit_fallback: bool = True
    # Mastering, once a track is complete: one integrated loudness for every track (EBU
    # R128), a true-peak ceiling, and the MP3 stream's bitrate (the master is FLAC).
    master_target_lufs: float = Field(default=-14.0, ge=-40.0, le=-5.0)
    master_ceiling_dbtp: float = Field(default=-1.0, ge=-12.0, le=0.0)
    mp3_bitrate_kbps: int = 192
    # Wall-clock seconds the synth spends per second of audio; 0 renders as fast as it can.
    synth_pace: float = Field(default=0.0, ge=0)

    # The reconcile schedule brings the database in line with workflows an operator closed
    # without running workflow code (`temporal workflow terminate`, timeouts).
    reconcile_interval_s: float = Field(default=5.0, gt=0)
    # A QUEUED job whose workflow never started (the API died mid-request) is started
    # after this long.
    reconcile_start_after_s: float = Field(default=60.0, gt=0)
    # "fixed": the two WORKER_MAX_CONCURRENT_* counts below; "resource": the SDK's
    # resource-based tuner hands out slots while the host stays under these targets.
    worker_tuning: Literal["fixed", "resource"] = "fixed"
    worker_target_cpu: float = Field(default=0.8, gt=0, le=1)
    worker_target_memory: float = Field(default=0.8, gt=0, le=1)
    worker_max_concurrent_activities: int = Field(default=8, ge=1)
    worker_max_concurrent_workflow_tasks: int = Field(default=16, ge=1)
    # Mastering (CPU-heavy: about 3 s of CPU per minute of audio) runs on its own task
    # queue, at most this many at once per worker process, so it never takes the slots
    # or the cores that submits, polls and bookkeeping need.
    worker_max_concurrent_mastering: int = Field(default=1, ge=1)
    worker_graceful_shutdown_s: float = Field(default=30.0, ge=0)
    # Prometheus /metrics of the worker (its own series and the Temporal SDK's); 0 disables.
    worker_metrics_port: int = Field(default=9464, ge=0, le=65535)
    # Worker Versioning (core/deployment.py): every worker is a version of this deployment;
    # WORKER_BUILD_ID overrides the build id computed from the source. WORKER_VERSIONING=off
    # runs unversioned, which `soundfoundry worker` refuses where versioning is in use.
    worker_deployment_name: str = Field(default="soundfoundry", min_length=1, pattern=r"^[^.]+$")
    worker_build_id: str | None = Field(default=None, min_length=1, max_length=255)
    worker_versioning: bool = True
    # "first": a worker makes its version current only when the deployment has none (a
    # first deployment); later versions wait for `soundfoundry deploy set-current`.
    # "always": the worker's version becomes current at start (`soundfoundry dev`).
    worker_make_current: Literal["first", "always"] = "first"

    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Webhook targets must resolve to public addresses; hosts listed here are exempt
    # (tests use loopback receivers).
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Webhook URLs may name ports 80 and 443 and these (comma-separated); hosts in
    # WEBHOOK_ALLOWED_HOSTS may name any.
    webhook_allowed_ports: Annotated[list[int], NoDecode] = Field(default_factory=list)
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    # Deliveries go through this HTTP(S) proxy when set (production egress control);
    # otherwise straight to the vetted address. Proxies from the environment are ignored.
    webhook_egress_proxy: SecretStr | None = None
    # Plans: the longest track each plan may ask for (README: "Plans, credits and limits").
    free_max_duration_s: int = Field(default=60, ge=5, le=300)
    pro_max_duration_s: int = Field(default=300, ge=5, le=300)
    # Per-user fixed windows, shared by every API process through the database.
    rate_limit_create_track_free: int = Field(default=5, ge=1)
    rate_limit_create_track_pro: int = Field(default=20, ge=1)
    rate_limit_cover_save: int = Field(default=30, ge=1)
    # Cover re-rolls (POST /api/tracks/{id}/increment-visual-version) per window; each draws.
    rate_limit_cover_reroll: int = Field(default=30, ge=1)
    rate_limit_window_s: int = Field(default=60, ge=1)
    rate_limit_series_create: int = Field(default=10, ge=1)
    rate_limit_series_window_s: int = Field(default=3600, ge=1)
    # Live job streams (GET /api/jobs/{id}/events) one user may hold open at once, per API
    # process; more answer 429.
    sse_max_streams_per_user: int = Field(default=5, ge=1)
    # A stream whose job has not changed for this long ends with an `idle` event.
    sse_idle_timeout_s: float = Field(default=900.0, gt=0)
    # How often an open stream checks its token again, so a revoked one closes it.
    sse_token_recheck_s: float = Field(default=5.0, gt=0)
    # Unrevoked, unexpired API tokens one user may hold (POST /api/tokens/self).
    api_tokens_max_per_user: int = Field(default=25, ge=1)
    # Larger request bodies get 413; the cover upload carries a 1 MB SVG inside JSON.
    max_request_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # Web pages opened from this machine (loopback) sign in as the dev user by themselves;
    # `soundfoundry dev` turns it on. Never on unless set.
    dev_autologin: bool = False
    # The per-run secret of the dev sign-in link (`/?login=...`); `soundfoundry dev` makes it.
    dev_login_secret: SecretStr | None = None
    # The address the API listens on; `soundfoundry api` sets it from --host. DEV_AUTOLOGIN
    # refuses to start unless it is loopback.
    api_host: str | None = None
    # Strict-Transport-Security max-age on every response; 0 leaves the header off.
    hsts_seconds: int = Field(default=0, ge=0)
    # /metrics on its own port (0: on the API port). On the API port, METRICS_TOKEN makes
    # it require `Authorization: Bearer <token>`; without a token it answers loopback
    # clients only, unless METRICS_PUBLIC=true opens it to everyone.
    api_metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_token: SecretStr | None = None
    metrics_public: bool = False
    log_level: str = "INFO"
    # Errors go to Sentry when set (API and worker); off when unset.
    sentry_dsn: SecretStr | None = None

    # Covers and style (README: "Covers and style"). Users may save their own SVG covers
    # unless this is off; generated covers work either way.
    feature_cover_save: bool = True
    # Every cover is drawn in its own child process (engines/render_sandbox.py), killed at the
    # deadline or by the kernel past its CPU seconds or address space.
    cover_render_timeout_s: float = Field(default=20.0, gt=0)
    cover_render_cpu_s: int = Field(default=10, ge=1)
    cover_render_memory_mb: int = Field(default=512, ge=64)
    # Renders at once per process; a user's beyond either bound get 429.
    cover_render_max_concurrent: int = Field(default=4, ge=1)
    cover_render_max_per_user: int = Field(default=2, ge=1)
    # Share-page PNG previews (domain/previews.py): drawn at once per process, and requests
    # waiting for them; past either, 503 with Retry-After.
    preview_max_renders: int = Field(default=2, ge=1)
    preview_max_waiting: int = Field(default=64, ge=1)
    # WAV downloads, decoded from the FLAC master as they stream (domain/downloads.py):
    # at once per signed link and per track owner (beyond, 429) and per process (503).
    wav_max_per_link: int = Field(default=1, ge=1)
    wav_max_per_user: int = Field(default=2, ge=1)
    wav_max_concurrent: int = Field(default=8, ge=1)
    wav_retry_after_s: int = Field(default=10, ge=1)
    # The style system ships dark: each part is switched on on its own.
    style_seed_enabled: bool = False
    style_unlocks_enabled: bool = False
    style_series_enabled: bool = False

    _split = field_validator(
        "music_providers",
        "cors_origins",
        "webhook_allowed_hosts",
        "webhook_allowed_ports",
        "provider_download_allowed_hosts",
        mode="before",
    )(_split_csv)

    @field_validator("music_providers")
    @classmethod
    def _known_providers(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in KNOWN_PROVIDERS]
        if unknown:
            raise ValueError(f"unknown providers {unknown}; known: {list(KNOWN_PROVIDERS)}")
        return value

    @field_validator("mp3_bitrate_kbps")
    @classmethod
    def _mp3_bitrate(cls, value: int) -> int:
        if value not in OFFERED_MP3_BITRATES_KBPS:
            raise ValueError(f"MP3 bitrate {value} kbps: choose one of {OFFERED_MP3_BITRATES_KBPS}")
        return value

    @model_validator(mode="after")
    def _temporal_target_from_profile(self) -> Self:
        """TEMPORAL_ADDRESS/TEMPORAL_NAMESPACE not given: the TOML profile's, so every reader
        of these two fields (links to the Temporal UI, the dev stack) sees where the client
        connects. A profile that cannot be read leaves the defaults; the client factory
        reports the problem when something connects."""
        wanted = {"temporal_address", "temporal_namespace"} - self.model_fields_set
        if not wanted:
            return self
        try:
            profile = load_profile(self.temporal_environment())
        except TemporalConfigError:
            return self
        if "temporal_address" in wanted and profile.address:
            self.temporal_address = profile.address
        if "temporal_namespace" in wanted and profile.namespace:
            self.temporal_namespace = profile.namespace
        return self

    @property
    def mastering_task_queue(self) -> str:
        return f"{self.task_queue}-mastering"

    @property
    def provider_chain(self) -> list[str]:
        """The ordered chain the worker tries.

        Without MUSIC_PROVIDERS it is `fal,replicate` for whichever keys are set, and the
        local synth when neither is, so the embedded default works offline.
        """
        chain = list(self.music_providers)
        if not chain:
            chain = [
                name
                for name, key in (("fal", self.fal_key), ("replicate", self.replicate_api_token))
                if key is not None
            ] or ["synth"]
        if self.music_provider:
            chain = [self.music_provider, *(name for name in chain if name != self.music_provider)]
        return chain

    def secret_values(self) -> list[str]:
        """Every configured secret, so logs can scrub them."""
        values = [
            self.secret_key,
            self.fal_key,
            self.replicate_api_token,
            self.replicate_webhook_secret,
            self.s3_secret_key,
            self.sentry_dsn,
            self.dev_login_secret,
            self.metrics_token,
            self.webhook_egress_proxy,
            self.temporal_api_key,
            self.temporal_tls_client_key_data,
        ]
        secrets = [v.get_secret_value() for v in values if v is not None]
        secrets += temporal_secrets(self.temporal_environment())
        database_password = make_url(self.database_url).password
        if database_password:
            secrets.append(str(database_password))
        return secrets

    def temporal_environment(self) -> dict[str, str]:
        """The TEMPORAL_* variables the SDK's environment configuration reads: the process
        environment's (TEMPORAL_GRPC_META_* and others SoundFoundry does not declare) and,
        over them, the fields above that were given (from the environment, `.env` or
        Settings(...)); defaults are left out so a TOML profile can supply them."""
        env = {k: v for k, v in os.environ.items() if k.upper().startswith("TEMPORAL_")}
        for name in self.model_fields_set:
            value = getattr(self, name)
            if not name.startswith("temporal_") or name == "temporal_ui_url" or value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[name.upper()] = str(value)
        return env

    def secret_key_problem(self) -> str | None:
        """Why SECRET_KEY must not sign links here, or None; only development may use the
        placeholder or a short key (anyone could mint download links with them)."""
        if self.environment == "development":
            return None
        key = self.secret_key.get_secret_value()
        if key == PLACEHOLDER_SECRET_KEY:
            return (
                "SECRET_KEY is the placeholder; set it to a random value of at least"
                f" {MIN_SECRET_KEY_LENGTH} characters (ENVIRONMENT={self.environment})"
            )
        if len(key) < MIN_SECRET_KEY_LENGTH:
            return (
                f"SECRET_KEY is shorter than {MIN_SECRET_KEY_LENGTH} characters; set a longer"
                f" random value (ENVIRONMENT={self.environment})"
            )
        return None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
