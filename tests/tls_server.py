"""A secured `temporal-server` on loopback for the client-side connection tests: mTLS on
its frontend (a throwaway CA), optionally JWT authorization (the server's default
authorizer and claim mapper, keys served from a loopback JWKS), SQLite persistence with
SQL visibility and no dynamic config (so the namespace cache lags as in production).

The production topology (Postgres, separate processes) is tests/cluster.py, whose CA and
server binary this shares; this one adds the JWT authorizer and starts in seconds.

    with SecureTemporal(tmp_path, authorization=True) as server:
        env = server.client_env(permissions=["default:write"])   # TEMPORAL_* variables
"""

from __future__ import annotations

import base64
import http.server
import json
import subprocess
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.cluster import CertificateAuthority, temporal_server_path
from tests.services import LOOPBACK, ServiceError, _stop_process, _SyncService, _tail, free_port

ADMIN = ["temporal-system:admin"]
# The internal frontend serves the server's own system worker without authorization.
SERVICES = ("frontend", "internal-frontend", "history", "matching", "worker")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class JwtIssuer:
    """Signs RS256 tokens in the server's default claim format and serves its JWKS."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self._key.public_key().public_numbers()
        jwks = {
            "keys": [
                {
                    "kty": "RSA",
                    "kid": "test",
                    "alg": "RS256",
                    "use": "sig",
                    "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
                    "e": _b64url(numbers.e.to_bytes(3, "big")),
                }
            ]
        }
        body = json.dumps(jwks).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._http = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self.jwks_url = f"http://{LOOPBACK}:{self._http.server_address[1]}/jwks.json"

    def token(self, permissions: list[str]) -> str:
        header = {"alg": "RS256", "typ": "JWT", "kid": "test"}
        claims = {
            "sub": "soundfoundry-test",
            "permissions": permissions,
            "exp": int(time.time()) + 3600,
        }
        signing_input = ".".join(_b64url(json.dumps(part).encode()) for part in (header, claims))
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


class SecureTemporal(_SyncService):
    """temporal-server with mTLS on its frontend; `authorization` adds JWT roles."""

    def __init__(
        self, folder: Path, *, authorization: bool = False, start_timeout: float = 90
    ) -> None:
        self.folder = folder
        self.authorization = authorization
        self.start_timeout = start_timeout
        (folder / "pki").mkdir(parents=True, exist_ok=True)
        self.ca = CertificateAuthority(folder / "pki", "test-ca")
        self.other_ca = CertificateAuthority(folder / "pki", "other-ca")
        self.server_pem = self.ca.issue("frontend", server=True)
        self.client_pem = self.ca.issue("soundfoundry")
        self.stranger_pem = self.other_ca.issue("stranger")
        self.issuer: JwtIssuer | None = JwtIssuer() if authorization else None
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def client_env(self, *, permissions: list[str] | None = None, **extra: str) -> dict[str, str]:
        """TEMPORAL_* variables of a client holding our certificate (and a token with
        `permissions`, default admin, when authorization is on)."""
        env = {
            "TEMPORAL_ADDRESS": self.address,
            "TEMPORAL_NAMESPACE": "default",
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(self.ca.cert),
            "TEMPORAL_TLS_CLIENT_CERT_PATH": str(self.client_pem.cert),
            "TEMPORAL_TLS_CLIENT_KEY_PATH": str(self.client_pem.key),
        }
        if self.issuer is not None:
            env["TEMPORAL_API_KEY"] = self.issuer.token(permissions or ADMIN)
        env.update(extra)
        return env

    def _config(self, ports: dict[str, int]) -> str:
        def service(name: str) -> str:
            return (
                f"  {name}:\n    rpc:\n      grpcPort: {ports[name]}\n"
                f"      membershipPort: {ports[name + '-m']}\n      bindOnIP: {LOOPBACK}\n"
                + (f"      httpPort: {ports[name + '-h']}\n" if name.endswith("frontend") else "")
            )

        def store(name: str) -> str:
            # In memory, as the server's own development config: file databases shared by
            # the services' separate pools lock each other out.
            return (
                f"    {name}:\n      sql:\n        pluginName: sqlite\n"
                "        databaseName: default\n"
                "        connectAddr: localhost\n        connectProtocol: tcp\n"
                "        connectAttributes:\n          mode: memory\n          cache: private\n"
                "        maxConns: 1\n        maxIdleConns: 1\n"
            )

        authorization = ""
        if self.issuer is not None:
            authorization = (
                "  authorization:\n    jwtKeyProvider:\n"
                f"      keySourceURIs: [{self.issuer.jwks_url}]\n      refreshInterval: 1m\n"
                "    permissionsClaimName: permissions\n    authorizer: default\n"
                "    claimMapper: default\n"
            )
        return (
            "log:\n  stdout: true\n  level: warn\n"
            "persistence:\n  defaultStore: default\n  visibilityStore: visibility\n"
            "  numHistoryShards: 1\n  datastores:\n"
            + store("default")
            + store("visibility")
            + "global:\n  membership:\n    maxJoinDuration: 30s\n"
            f"    broadcastAddress: {LOOPBACK}\n"
            "  tls:\n    frontend:\n      server:\n"
            f"        certFile: {self.server_pem.cert}\n        keyFile: {self.server_pem.key}\n"
            f"        requireClientAuth: true\n        clientCaFiles: [{self.ca.cert}]\n"
            + authorization
            + "services:\n"
            + "".join(service(name) for name in SERVICES)
            + "clusterMetadata:\n  enableGlobalNamespace: false\n  failoverVersionIncrement: 10\n"
            "  masterClusterName: active\n  currentClusterName: active\n  clusterInformation:\n"
            "    active:\n      enabled: true\n      initialFailoverVersion: 1\n"
            f"      rpcName: frontend\n      rpcAddress: {LOOPBACK}:{ports['frontend']}\n"
            "dcRedirectionPolicy:\n  policy: noop\n"
        )

    def _start(self) -> None:
        ports = {n + s: free_port() for n in SERVICES for s in ("", "-m")}
        ports.update({"frontend-h": free_port(), "internal-frontend-h": free_port()})
        self.port = ports["frontend"]
        config_dir = self.folder / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "secure.yaml").write_text(self._config(ports))
        log = self.folder / "temporal-server.log"
        with log.open("wb") as out:
            self._proc = subprocess.Popen(
                [str(temporal_server_path()), "--root", "/", "--config", str(config_dir),
                 "--env", "secure", "--allow-no-auth", "start",
                 *(arg for name in SERVICES for arg in ("--service", name))],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self._wait_ready(log)

    def _wait_ready(self, log: Path) -> None:
        import asyncio

        from google.protobuf.duration_pb2 import Duration
        from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
        from temporalio.client import Client
        from temporalio.service import TLSConfig

        async def register() -> None:
            tls = TLSConfig(
                server_root_ca_cert=self.ca.cert.read_bytes(),
                client_cert=self.client_pem.cert.read_bytes(),
                client_private_key=self.client_pem.key.read_bytes(),
            )
            api_key = self.issuer.token(ADMIN) if self.issuer else None
            client = await Client.connect(self.address, tls=tls, api_key=api_key)
            await client.workflow_service.register_namespace(
                RegisterNamespaceRequest(
                    namespace="default",
                    workflow_execution_retention_period=Duration(seconds=3 * 86400),
                )
            )

        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise ServiceError(f"temporal-server exited:\n{_tail(log)}")
            try:
                asyncio.run(register())
                return
            except Exception as exc:
                if "already" in str(exc).lower():
                    return
                if time.monotonic() > deadline:
                    raise ServiceError(f"temporal-server not ready: {exc}\n{_tail(log)}") from exc
            time.sleep(0.5)

    def stop(self) -> None:
        _stop_process(self._proc)
        self._proc = None
        if self.issuer is not None:
            self.issuer.close()
