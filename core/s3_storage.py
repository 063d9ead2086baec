"""Object storage on S3 (aiobotocore), behind `core.storage.Storage`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from opentelemetry.trace import Span, SpanKind
from opentelemetry.util.types import AttributeValue

from core.metrics import count_s3_error, init_storage_series
from core.storage import CHUNK, ObjectNotFound, Storage, StorageError, validate_key
from core.telemetry import tracer

# What a failing S3 call raises: S3's answer, botocore's connection and timeout errors, and
# aiohttp's while a body streams.
S3_FAILURES = (ClientError, BotoCoreError, aiohttp.ClientError)
_tracer = tracer("soundfoundry.storage")


class S3Storage(Storage):
    def __init__(
        self,
        *,
        bucket: str,
        endpoint: str | None,
        access_key: str | None,
        secret_key: str | None,
        region: str,
        public_endpoint: str | None = None,
    ) -> None:
        self.bucket = bucket
        self._client_args: dict[str, Any] = {
            "endpoint_url": endpoint,
            "aws_access_key_id": access_key,
            "aws_secret_access_key": secret_key,
            "region_name": region,
            # Path-style addressing works with MinIO, versitygw and AWS alike.
            "config": AioConfig(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        }
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        # Links are signed for the address browsers use, which in a compose network is
        # not the one the app talks to (minio:9000). Signing needs no connection.
        self._public_endpoint = public_endpoint if public_endpoint != endpoint else None
        self._signer: Any = None
        init_storage_series()

    async def open(self) -> None:
        if self._client is not None:
            return
        self._stack = AsyncExitStack()
        self._client = await self._stack.enter_async_context(
            get_session().create_client("s3", **self._client_args)
        )
        self._signer = self._client
        if self._public_endpoint:
            self._signer = await self._stack.enter_async_context(
                get_session().create_client(
                    "s3", **{**self._client_args, "endpoint_url": self._public_endpoint}
                )
            )

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = None
        self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise StorageError("S3 storage used before open()")
        return self._client

    # One PutObject per write, never multipart: S3 makes an object visible only once its
    # whole body has arrived, so readers see the old object or the new one, and of two
    # writers at one instant the later one wins whole (no part of the other survives).
    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        with self._call("PutObject", key), path.open("rb") as body:
            await self.client.put_object(
                Bucket=self.bucket,
                Key=validate_key(key),
                Body=body,
                **_stored_headers(content_type),
            )

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        with self._call("PutObject", key):
            await self.client.put_object(
                Bucket=self.bucket,
                Key=validate_key(key),
                Body=data,
                **_stored_headers(content_type),
            )

    async def download(self, key: str, dest: Path) -> None:
        # The span and the error count cover streaming the body too, where a dropped
        # connection shows up.
        with self._call("GetObject", key):
            response = await self._get(key)
            async with response["Body"] as stream:
                with dest.open("wb") as out:
                    while chunk := await stream.read(CHUNK):
                        out.write(chunk)

    async def get_bytes(self, key: str) -> bytes:
        with self._call("GetObject", key):
            response = await self._get(key)
            async with response["Body"] as stream:
                data: bytes = await stream.read()
                return data

    async def copy(self, src: str, dst: str) -> None:
        with self._call("CopyObject", dst, {"aws.s3.copy_source": f"{self.bucket}/{src}"}):
            try:
                await self.client.copy_object(
                    Bucket=self.bucket,
                    Key=validate_key(dst),
                    CopySource={"Bucket": self.bucket, "Key": validate_key(src)},
                )
            except ClientError as exc:
                raise _translate(exc, src) from exc

    async def delete(self, key: str) -> None:
        with self._call("DeleteObject", key):
            await self.client.delete_object(Bucket=self.bucket, Key=validate_key(key))

    async def exists(self, key: str) -> bool:
        with self._call("HeadObject", key):
            try:
                await self.client.head_object(Bucket=self.bucket, Key=validate_key(key))
            except ClientError as exc:
                # The expected answer for a missing key: neither an error nor counted.
                if _is_missing(exc):
                    return False
                raise
        return True

    async def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        with self._call("ListObjectsV2", attributes={"aws.s3.prefix": prefix}):
            paginator = self.client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    async def signed_url(
        self, key: str, ttl_s: int, download_name: str | None = None, inline: bool = False
    ) -> str:
        # The response headers are part of the presigned query, so the signature covers
        # them. S3 cannot send a CSP, so `inline` never makes an SVG a document here:
        # SVGs always go out as attachments of their own type (an <img> still shows
        # them; a browser opening the link downloads instead of running the document).
        params: dict[str, str] = {"Bucket": self.bucket, "Key": validate_key(key)}
        if key.endswith(".svg"):
            params["ResponseContentType"] = SVG
            params["ResponseContentDisposition"] = _attachment(download_name or key)
        elif download_name:
            params["ResponseContentDisposition"] = _attachment(download_name)
        url: str = await self._signer.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=ttl_s
        )
        return url

    async def size(self, key: str) -> int:
        with self._call("HeadObject", key):
            try:
                head = await self.client.head_object(Bucket=self.bucket, Key=validate_key(key))
            except ClientError as exc:
                raise _translate(exc, key) from exc
        return int(head["ContentLength"])

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        with self._call("GetObject", key):
            try:
                response = await self.client.get_object(
                    Bucket=self.bucket,
                    Key=validate_key(key),
                    Range=f"bytes={start}-{start + length - 1}",
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""  # from past the end
                raise _translate(exc, key) from exc
            async with response["Body"] as stream:
                data: bytes = await stream.read()
                return data

    @contextmanager
    def _call(
        self,
        operation: str,
        key: str | None = None,
        attributes: dict[str, AttributeValue] | None = None,
    ) -> Iterator[Span]:
        """One S3 operation: a client span (aiobotocore has no instrumentation of its own)
        and `s3_errors_total{operation}` when an S3 failure escapes it, also when it
        escapes translated into a StorageError."""
        span_attributes: dict[str, AttributeValue] = {
            "rpc.system": "aws-api",
            "rpc.service": "S3",
            "rpc.method": operation,
            "aws.s3.bucket": self.bucket,
            **(attributes or {}),
        }
        if key is not None:
            span_attributes["aws.s3.key"] = key
        with _tracer.start_as_current_span(
            f"s3.{operation}", kind=SpanKind.CLIENT, attributes=span_attributes
        ) as span:
            try:
                yield span
            except Exception as exc:
                failure = exc if isinstance(exc, S3_FAILURES) else exc.__cause__
                if isinstance(failure, S3_FAILURES):
                    count_s3_error(operation)
                    if isinstance(failure, ClientError):
                        code = str(failure.response.get("Error", {}).get("Code", ""))
                        span.set_attribute("aws.s3.error_code", code)
                raise

    async def _get(self, key: str) -> Any:
        try:
            return await self.client.get_object(Bucket=self.bucket, Key=validate_key(key))
        except ClientError as exc:
            raise _translate(exc, key) from exc


SVG = "image/svg+xml"


def _attachment(name: str) -> str:
    filename = name.rsplit("/", 1)[-1].replace('"', "")
    return f'attachment; filename="{filename}"'


def _stored_headers(content_type: str) -> dict[str, str]:
    """Headers stored with an object. An SVG is an attachment even when fetched without
    our link's overrides (a bucket policy or a CDN in front of it)."""
    headers = {"ContentType": content_type}
    if content_type.split(";")[0].strip().lower() == SVG:
        headers["ContentDisposition"] = "attachment"
    return headers


def _is_missing(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _translate(exc: ClientError, key: str) -> StorageError:
    return ObjectNotFound(key) if _is_missing(exc) else StorageError(str(exc))
