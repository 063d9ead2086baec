"""Object storage behind one interface: S3 (`core.s3_storage`) or a local folder.

Downloads always go through signed, expiring links. S3 signs its own; the local backend
signs links to the API's `/files/...` route with an HMAC of the key and expiry.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import TypeVar
from urllib.parse import quote, urlencode

from core.settings import Settings

CHUNK = 1024 * 1024
_T = TypeVar("_T")


class StorageError(Exception):
    pass


class ObjectNotFound(StorageError):
    pass


def audio_key(user_id: object, track_id: object, extension: str) -> str:
    return f"tracks/{user_id}/{track_id}.{extension}"


def rendition_key(user_id: object, track_id: object, name: str, extension: str) -> str:
    """`tracks/<user>/<track>.master.flac`, `....stream.mp3`: never the provider's file's
    key (`tracks/<user>/<track>.<ext>`), so making renditions overwrites nothing."""
    return f"tracks/{user_id}/{track_id}.{name}.{extension}"


def cover_key(user_id: object, track_id: object) -> str:
    return f"covers/{user_id}/{track_id}.svg"


def validate_key(key: str) -> str:
    path = PurePosixPath(key)
    if not key or path.is_absolute() or any(part in ("", ".", "..") for part in key.split("/")):
        raise StorageError(f"invalid object key {key!r}")
    return key


class Storage(ABC):
    async def open(self) -> None:  # noqa: B027 - backends without connections skip it
        """Open network clients; called once at start-up."""

    async def close(self) -> None:  # noqa: B027
        """Release network clients."""

    async def __aenter__(self) -> Storage:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abstractmethod
    async def put_file(self, key: str, path: Path, content_type: str) -> None: ...

    @abstractmethod
    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    async def download(self, key: str, dest: Path) -> None: ...

    @abstractmethod
    async def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    async def copy(self, src: str, dst: str) -> None: ...

    @abstractmethod
    async def delete(self, key: str) -> None: ...

    @abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abstractmethod
    async def list_keys(self, prefix: str) -> list[str]: ...

    @abstractmethod
    async def signed_url(self, key: str, ttl_s: int, download_name: str | None = None) -> str: ...


class LocalStorage(Storage):
    """Objects as files under one folder; for the embedded default and offline use.

    File I/O runs on threads of this backend's own, never the event loop's default
    executor, so nothing else that borrows threads there can make storage wait.
    """

    IO_THREADS = 8

    def __init__(self, root: Path, public_base_url: str, secret: str) -> None:
        self.root = root.resolve()
        self.public_base_url = public_base_url.rstrip("/")
        self._secret = secret.encode()
        self._io: ThreadPoolExecutor | None = None

    async def close(self) -> None:
        if self._io is not None:
            self._io.shutdown(wait=False)
            self._io = None

    async def _on_io_thread(self, work: Callable[..., _T], *args: object) -> _T:
        if self._io is None:  # made on first use: opening the backend is optional
            self._io = ThreadPoolExecutor(self.IO_THREADS, thread_name_prefix="local-storage")
        return await asyncio.get_running_loop().run_in_executor(self._io, work, *args)

    def path_for(self, key: str) -> Path:
        return self.root / validate_key(key)

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        await self._on_io_thread(self._copy_in, path, self.path_for(key))

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        await self._on_io_thread(self._write, self.path_for(key), data)

    async def download(self, key: str, dest: Path) -> None:
        src = self._existing(key)
        await self._on_io_thread(shutil.copyfile, src, dest)

    async def get_bytes(self, key: str) -> bytes:
        return await self._on_io_thread(self._existing(key).read_bytes)

    async def copy(self, src: str, dst: str) -> None:
        await self._on_io_thread(self._copy_in, self._existing(src), self.path_for(dst))

    async def delete(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)

    async def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    async def list_keys(self, prefix: str) -> list[str]:
        def walk() -> list[str]:
            # Only the folder the prefix names is walked: the cost follows what is listed,
            # not the size of the whole library.
            folder = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
            if not folder.is_dir() or not folder.resolve().is_relative_to(self.root):
                return []
            keys = (p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())
            return sorted(k for k in keys if k.startswith(prefix) and ".tmp-" not in k)

        return await self._on_io_thread(walk)

    async def signed_url(self, key: str, ttl_s: int, download_name: str | None = None) -> str:
        expires = int(time.time()) + ttl_s
        query = {"expires": str(expires), "sig": self.sign(key, expires)}
        if download_name:
            query["name"] = download_name
        return f"{self.public_base_url}/files/{quote(validate_key(key))}?{urlencode(query)}"

    def sign(self, key: str, expires: int) -> str:
        return hmac.new(self._secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def verify(self, key: str, expires: int, signature: str) -> bool:
        fresh = expires >= time.time()
        return fresh and hmac.compare_digest(self.sign(key, expires), signature)

    def _existing(self, key: str) -> Path:
        path = self.path_for(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path

    @staticmethod
    def _copy_in(src: Path, dest: Path) -> None:
        # Write beside the target then rename, so a reader never sees half a file.
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)

    @staticmethod
    def _write(dest: Path, data: bytes) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, dest)


def build_storage(settings: Settings) -> Storage:
    if settings.storage_backend == "s3":
        # Imported here: the S3 client stack is ~16 MB and 150 modules that the embedded
        # default (a local folder) never uses.
        from core.s3_storage import S3Storage

        return S3Storage(
            bucket=settings.s3_bucket,
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value()
            if settings.s3_access_key
            else None,
            secret_key=settings.s3_secret_key.get_secret_value()
            if settings.s3_secret_key
            else None,
            region=settings.s3_region,
            public_endpoint=settings.s3_public_endpoint,
        )
    return LocalStorage(
        settings.storage_local_dir, settings.public_base_url, settings.secret_key.get_secret_value()
    )
