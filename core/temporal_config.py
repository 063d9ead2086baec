"""Where and how to reach Temporal, from the Temporal SDK's environment configuration.

The same TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS* variables and
`temporal.toml` profiles (TEMPORAL_PROFILE, TEMPORAL_CONFIG_FILE) the `temporal` CLI reads,
so one profile serves the CLI, the API, the worker and every `soundfoundry` command.
`temporalio.envconfig` does the reading and the merging (variables over the profile);
this module turns its answer into connect arguments, names what is wrong with it in one
sentence, and lists its secrets for the log scrubber.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.envconfig import ClientConfigProfile, ClientConfigTLS, DataSource
from temporalio.service import TLSConfig

DEFAULT_ADDRESS = "localhost:7233"
DEFAULT_NAMESPACE = "default"


class TemporalConfigError(Exception):
    """The Temporal configuration cannot be used; the message is one sentence, no secrets."""


@dataclass(frozen=True)
class TemporalConnection:
    address: str
    namespace: str
    # Secrets stay out of repr, so a logged or printed connection shows none.
    api_key: str | None = field(default=None, repr=False)
    tls: bool | TLSConfig = field(default=False, repr=False)
    rpc_metadata: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def mutual_tls(self) -> bool:
        return isinstance(self.tls, TLSConfig) and self.tls.client_cert is not None

    @property
    def security(self) -> str:
        """How we authenticate, without a secret: `mTLS`, `TLS + API key`, `plaintext`..."""
        transport = "mTLS" if self.mutual_tls else "TLS" if self.tls else "plaintext"
        return f"{transport} + API key" if self.api_key else transport

    def describe(self) -> str:
        return f"{self.address}, namespace {self.namespace} ({self.security})"


def load_profile(env: Mapping[str, str]) -> ClientConfigProfile:
    """The profile TEMPORAL_PROFILE names (else `default`) from TEMPORAL_CONFIG_FILE (else
    the CLI's default file, if any), with the TEMPORAL_* variables in `env` over it."""
    try:
        return ClientConfigProfile.load(
            profile=env.get("TEMPORAL_PROFILE") or None, override_env_vars=env
        )
    except Exception as exc:
        # The loader's own message may quote a line of the file (an api_key); say only
        # what went wrong where.
        where = env.get("TEMPORAL_CONFIG_FILE") or "the default temporal.toml"
        if "not found" in str(exc) and env.get("TEMPORAL_PROFILE"):
            raise TemporalConfigError(
                f"Temporal profile {env['TEMPORAL_PROFILE']!r} is not in {where}"
                " (TEMPORAL_PROFILE, TEMPORAL_CONFIG_FILE)"
            ) from None
        raise TemporalConfigError(
            f"the Temporal configuration file {where} could not be read or parsed"
            " (TEMPORAL_CONFIG_FILE)"
        ) from None


def load_connection(
    env: Mapping[str, str],
    default_address: str = DEFAULT_ADDRESS,
    default_namespace: str = DEFAULT_NAMESPACE,
) -> TemporalConnection:
    """Raises TemporalConfigError when the profile or a certificate or key cannot be read."""
    profile = load_profile(env)
    return TemporalConnection(
        address=profile.address or default_address,
        namespace=profile.namespace or default_namespace,
        api_key=profile.api_key or None,
        tls=_tls(profile),
        rpc_metadata=dict(profile.grpc_meta),
    )


def _tls(profile: ClientConfigProfile) -> bool | TLSConfig:
    # An API key alone turns TLS on (Temporal Cloud), as the SDK and the CLI do.
    if profile.tls is None:
        return bool(profile.api_key)
    if profile.tls.disabled:
        return False
    tls = profile.tls
    if (tls.client_cert is None) != (tls.client_private_key is None):
        raise TemporalConfigError(
            "a Temporal client certificate needs its key and a key its certificate: set both"
            " TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH (or the _DATA"
            " variables), or neither"
        )
    return TLSConfig(
        domain=tls.server_name,
        server_root_ca_cert=_read(tls.server_root_ca_cert, "TEMPORAL_TLS_SERVER_CA_CERT_PATH"),
        client_cert=_read(tls.client_cert, "TEMPORAL_TLS_CLIENT_CERT_PATH"),
        client_private_key=_read(tls.client_private_key, "TEMPORAL_TLS_CLIENT_KEY_PATH"),
    )


def _read(source: DataSource | None, variable: str) -> bytes | None:
    if source is None:
        return None
    if isinstance(source, str):
        return source.encode()
    if isinstance(source, bytes):
        return source
    try:
        return source.read_bytes()
    except OSError as exc:
        # The path names the file, never its contents.
        raise TemporalConfigError(
            f"{variable}: cannot read {source} ({exc.strerror or type(exc).__name__})"
        ) from None


def temporal_secrets(env: Mapping[str, str]) -> list[str]:
    """The API key and the client key (its text, wherever it comes from), for the log
    scrubber; what cannot be loaded yields what the variables hold."""
    secrets = [
        env[name] for name in ("TEMPORAL_API_KEY", "TEMPORAL_TLS_CLIENT_KEY_DATA") if env.get(name)
    ]
    try:
        profile = load_profile(env)
    except TemporalConfigError:
        return secrets
    if profile.api_key:
        secrets.append(profile.api_key)
    key = _key_text(profile.tls)
    if key:
        secrets.append(key)
        # A message may quote the key's body without its armour lines.
        secrets += [line for line in key.splitlines() if line and not line.startswith("-----")]
    return secrets


def _key_text(tls: ClientConfigTLS | None) -> str | None:
    source = tls.client_private_key if tls else None
    if isinstance(source, Path):
        try:
            return source.read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
    if isinstance(source, bytes):
        return source.decode(errors="replace").strip()
    return source.strip() if source else None
