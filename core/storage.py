"""Object storage behind one interface: S3 (`core.s3_storage`) or a local folder.

Downloads always go through signed, expiring links. S3 signs its own; the local backend
signs links to the API's `/files/...` route (`core.signing`, purpose "files") over every
parameter the route reads: key, expiry, download name and `inline`.

Local writes go to a temporary name unique to the write, are flushed to disk, then renamed
into place: a reader sees the old file or the new one, and of two writers at one instant
one wins whole.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TypeVar
from urllib.parse import quote, urlencode

from core.settings import Settings
from core.signing import FILES, LinkSigner

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
    async def signed_url(
        self, key: str, ttl_s: int, download_name: str | None = None, inline: bool = False
    ) -> str:
        """A link that expires in `ttl_s`. `download_name` asks for an attachment of that
        name; `inline` asks to show an SVG in the browser where the backend can sandbox it."""

    @abstractmethod
    async def size(self, key: str) -> int:
        """The object's size in bytes; ObjectNotFound when there is none."""

    @abstractmethod
    async def read_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes of the object from offset `start`, fewer at its end (for readers
        that stream a large object a block at a time, never holding all of it)."""


class LocalStorage(Storage):
    """Objects as files under one folder; for the embedded default and offline use.

    File I/O runs on threads of this backend's own, never the event loop's default
    executor, so nothing else that borrows threads there can make storage wait.
    """

    IO_THREADS = 8

    def __init__(self, root: Path, public_base_url: str, secret: str) -> None:
        self.root = root.resolve()
        self.public_base_url = public_base_url.rstrip("/")
        self._signer = LinkSigner(secret)
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

    async def signed_url(
        self, key: str, ttl_s: int, download_name: str | None = None, inline: bool = False
    ) -> str:
        expires = int(time.time()) + ttl_s
        sig = self.sign(validate_key(key), expires, download_name, inline)
        query = {"expires": str(expires), "sig": sig}
        if download_name:
            query["name"] = download_name
        if inline:
            query["inline"] = "true"
        return f"{self.public_base_url}/files/{quote(key)}?{urlencode(query)}"

    async def size(self, key: str) -> int:
        return (await self._on_io_thread(self._existing(key).stat)).st_size

    async def read_range(self, key: str, start: int, length: int) -> bytes:
        path = self._existing(key)

        def read() -> bytes:
            with path.open("rb") as file:
                file.seek(start)
                return file.read(length)

        return await self._on_io_thread(read)

    def sign(self, key: str, expires: int, name: str | None = None, inline: bool = False) -> str:
        return self._signer.sign(FILES, expires, *_file_fields(key, name, inline))

    def verify(
        self, key: str, expires: int, signature: str, name: str | None = None, inline: bool = False
    ) -> bool:
        """True for a fresh `/files` link signed for exactly this key, name and `inline`."""
        return self._signer.verify(FILES, signature, expires, *_file_fields(key, name, inline))

    def _existing(self, key: str) -> Path:
        path = self.path_for(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path

    @staticmethod
    def _copy_in(src: Path, dest: Path) -> None:
        with src.open("rb") as source:
            _write_atomically(dest, lambda out: shutil.copyfileobj(source, out, CHUNK))

    @staticmethod
    def _write(dest: Path, data: bytes) -> None:
        _write_atomically(dest, lambda out: out.write(data))


def _file_fields(key: str, name: str | None, inline: bool) -> tuple[str, str, str]:
    # No name and an empty one are the same link: the route treats both as "no name".
    return key, name or "", "inline" if inline else ""


def _write_atomically(dest: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write beside the target under a name no other write uses, flush it to disk, then
    rename it into place: a reader never sees half a file, two writers never share a
    temporary file, and a crash leaves the old file or the new one, never a torn one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.tmp-{uuid.uuid4().hex}")
    # O_EXCL: never write into a file someone else made; 0o666 less the umask, as usual.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable (the new directory entry), not only the file's bytes.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
