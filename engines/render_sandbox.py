"""Checking and drawing SVG in a throwaway child process with CPU, memory and time limits.

A sanitized SVG can still be slow to draw (stacked filters, shapes repeated through
references below the sanitizer's budget). Drawn in a thread, such a render could not be
stopped: it kept a pool thread and a CPU after its request had given up. Here every render
is its own short-lived process (`child_main` of this module, run with `-I` and an empty
environment, so it sees no secrets). A user's SVG is parsed and sanitized in that same
child (`sanitize_and_render`), so no work a user's document causes runs in the API
process, whatever its shape; only the size check (no parsing) runs before the child. And:

* the child caps itself with `setrlimit` before reading the SVG: `RLIMIT_CPU` (the kernel
  kills it with SIGXCPU), `RLIMIT_AS` (an allocation past it fails and the renderer
  aborts), no core files and no file writes; and it runs at the lowest CPU priority, so
  the API's own threads win the CPU over any number of renders;
* the parent waits on pipes from the event loop (no thread pool is involved) and kills the
  child at the wall-clock deadline, or when the waiting request is cancelled, so a render
  never outlives its request;
* `RenderSandbox.slot` bounds how many renders run at once, per user and per process.
  A user's render beyond either bound is refused (`RenderBusy`, the API's 429) rather than
  queued; trusted renders (the worker's generated covers, no owner) wait for a free slot.

A process per render costs a Python start (tens of milliseconds) next to renders of a
few hundred; in exchange a kill takes exactly one render down and nothing else, which a
shared process pool cannot promise.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import sys
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engines.svg_sanitize import SvgRejected, SvgTooComplex, SvgTooLarge, check_size

if TYPE_CHECKING:
    from core.settings import Settings

# The child's exit codes besides 0 and death by a signal.
_EXIT_UNDRAWABLE = 3  # resvg refused the document; the reason is on stderr
_EXIT_OUT_OF_MEMORY = 4
_EXIT_REJECTED = 5  # the sanitizer refused the document; {"kind", "reason"} on stderr
_STDERR_LIMIT = 400  # characters of the child's complaint worth passing on
# The child runs `child_main` of this module. -I leaves the project off sys.path (the
# image puts it there with PYTHONPATH, which -I ignores), so the child is told where it is.
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CHILD_CODE = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from engines.render_sandbox import child_main; sys.exit(child_main())"
)
# What the sanitizer raised in the child, raised again here by name.
_REJECTIONS: dict[str, type[SvgRejected]] = {
    kind.__name__: kind for kind in (SvgRejected, SvgTooComplex, SvgTooLarge)
}
_LENGTH = struct.Struct("<Q")  # prefixes the sanitized SVG in the child's answer


class RenderFailed(ValueError):
    """The SVG could not be drawn; the reason is fit to show the uploader."""


class RenderTooCostly(RenderFailed):
    """The render was stopped: over its CPU time, memory or wall-clock deadline."""


class RenderBusy(Exception):
    """No render slot for this caller right now; try again shortly."""

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class RenderLimits:
    timeout_s: float = 20.0
    cpu_s: int = 10
    memory_mb: int = 512
    max_concurrent: int = 4
    max_per_user: int = 2

    @classmethod
    def from_settings(cls, settings: Settings) -> RenderLimits:
        return cls(
            timeout_s=settings.cover_render_timeout_s,
            cpu_s=settings.cover_render_cpu_s,
            memory_mb=settings.cover_render_memory_mb,
            max_concurrent=settings.cover_render_max_concurrent,
            max_per_user=settings.cover_render_max_per_user,
        )


class RenderSandbox:
    """Renders with one set of limits; one instance per set per process (`sandbox_for`).

    The slot counters are plain integers changed only on the event loop's thread, so one
    instance can serve several event loops in turn (tests run one per test).
    """

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.running = 0
        self.started = 0  # child processes started, ever (what tests and operators count)
        self._per_owner: dict[str, int] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()

    @asynccontextmanager
    async def slot(self, owner: object | None) -> AsyncIterator[None]:
        """Hold one render slot; refuse a user's render when their or the process's slots
        are taken, wait for one when `owner` is None."""
        key = None if owner is None else str(owner)
        limits = self.limits
        if key is not None:
            if self._per_owner.get(key, 0) >= limits.max_per_user:
                raise RenderBusy(
                    f"you already have {limits.max_per_user} cover(s) being drawn; "
                    "try again when they finish",
                    retry_after_s=max(1, round(limits.timeout_s / 4)),
                )
            if self.running >= limits.max_concurrent:
                raise RenderBusy(
                    f"the server is drawing {limits.max_concurrent} covers already; "
                    "try again in a few seconds",
                    retry_after_s=max(1, round(limits.timeout_s / 4)),
                )
        else:
            while self.running >= limits.max_concurrent:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                try:
                    await waiter
                except BaseException:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
                    elif waiter.done() and not waiter.cancelled():
                        self._wake_one()  # woken, then cancelled: pass the turn on
                    raise
        self.running += 1
        if key is not None:
            self._per_owner[key] = self._per_owner.get(key, 0) + 1
        try:
            yield
        finally:
            self.running -= 1
            if key is not None:
                left = self._per_owner.pop(key) - 1
                if left:
                    self._per_owner[key] = left
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.done() or waiter.get_loop().is_closed():
                continue
            waiter.set_result(None)
            return

    async def render(self, svg: str, *, size_px: int | None = None, **options: object) -> bytes:
        """PNG bytes of a trusted `svg` (ours, or already sanitized) drawn by resvg with
        `options` (its keyword arguments), framed square at `size_px` when given.

        Raises RenderFailed when resvg refuses the document, RenderTooCostly when the child
        is stopped. Takes no slot: callers hold one (`slot`) around it.
        """
        _, png = await self._run(svg, sanitize=False, size_px=size_px, options=options)
        return png

    async def sanitize_and_render(
        self, svg: str, *, size_px: int | None = None, **options: object
    ) -> tuple[str, bytes]:
        """A user's `svg` sanitized (engines.svg_sanitize) and drawn, both in the child:
        (the sanitized document, its PNG). The PNG is framed at `size_px`, the document
        is not.

        Raises what `sanitize_svg` raises (SvgTooLarge before any child starts), and what
        `render` raises. Takes no slot: callers hold one (`slot`) around it.
        """
        check_size(svg)
        return await self._run(svg, sanitize=True, size_px=size_px, options=options)

    async def _run(
        self, svg: str, *, sanitize: bool, size_px: int | None, options: dict[str, object]
    ) -> tuple[str, bytes]:
        limits = self.limits
        config = json.dumps(
            {
                "cpu_s": limits.cpu_s,
                "memory_mb": limits.memory_mb,
                "sanitize": sanitize,
                "size_px": size_px,
                "options": options,
            }
        )
        self.started += 1
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",  # no user site, no PYTHON* variables, no current folder on sys.path
            "-c",
            _CHILD_CODE,
            _PROJECT_ROOT,
            config,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={},  # the renderer needs no settings, and so sees no secrets
        )
        try:
            try:
                out, err = await asyncio.wait_for(
                    child.communicate(svg.encode("utf-8", "surrogatepass")), limits.timeout_s
                )
            except TimeoutError:
                child.kill()
                await child.wait()
                raise RenderTooCostly(
                    f"the SVG took longer than {limits.timeout_s:g} s to check and draw; "
                    "simplify it"
                ) from None
        finally:
            # Also on cancellation (the request went away): the render goes with it.
            if child.returncode is None:
                child.kill()
        answer = self._outcome(child.returncode, out, err.decode("utf-8", "replace"))
        if not sanitize:
            return svg, answer
        (length,) = _LENGTH.unpack_from(answer)
        end = _LENGTH.size + length
        return answer[_LENGTH.size : end].decode("utf-8", "surrogatepass"), answer[end:]

    def _outcome(self, code: int | None, out: bytes, err: str) -> bytes:
        limits = self.limits
        if code == 0:
            return out
        if code == _EXIT_REJECTED:
            rejection = json.loads(err)
            raise _REJECTIONS[rejection["kind"]](rejection["reason"])
        if code == _EXIT_UNDRAWABLE:
            raise RenderFailed(f"the SVG could not be drawn: {err.strip()[:_STDERR_LIMIT]}")
        if code in (-signal.SIGXCPU, -signal.SIGKILL):
            raise RenderTooCostly(
                f"the SVG needs more than {limits.cpu_s} s of CPU to check and draw; simplify it"
            )
        if code in (_EXIT_OUT_OF_MEMORY, -signal.SIGABRT) or "memory allocation" in err:
            raise RenderTooCostly(
                f"the SVG needs more than {limits.memory_mb} MB of memory to check and draw; "
                "simplify it"
            )
        raise RenderFailed(f"the renderer stopped on this SVG (exit {code}); simplify it")


_sandboxes: dict[RenderLimits, RenderSandbox] = {}


def sandbox_for(settings: Settings | None = None) -> RenderSandbox:
    """The process's sandbox for these settings' limits (the defaults without settings)."""
    limits = RenderLimits() if settings is None else RenderLimits.from_settings(settings)
    sandbox = _sandboxes.get(limits)
    if sandbox is None:
        sandbox = _sandboxes[limits] = RenderSandbox(limits)
    return sandbox


# --------------------------------------------------------------------------- the child


def child_main() -> int:
    """The child: limits on itself, then sanitize (when asked), frame and draw the SVG
    read from stdin; the answer on stdout, or an exit code and a reason on stderr."""
    import gc
    import resource

    config = json.loads(sys.argv[1])
    # Limits first, before the untrusted document is even read.
    cpu_s = int(config["cpu_s"])
    memory = int(config["memory_mb"]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU, then SIGKILL
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # Lowest CPU priority: while renders run, the API serving everyone else comes first.
    os.nice(19)
    # A parsed document has no reference cycles, and this process ends in a moment: the
    # cyclic collector would only re-scan the tree (a third of the sanitizer's time).
    gc.disable()
    from engines.svg_frame import square_svg
    from engines.svg_sanitize import sanitize_svg

    svg = sys.stdin.buffer.read().decode("utf-8", "surrogatepass")
    answer = b""
    try:
        if config["sanitize"]:
            svg = sanitize_svg(svg)
            clean = svg.encode("utf-8", "surrogatepass")
            answer = _LENGTH.pack(len(clean)) + clean
        if config["size_px"]:
            svg = square_svg(svg, int(config["size_px"]))
        import resvg_py

        png = bytes(resvg_py.svg_to_bytes(svg_string=svg, **config["options"]))
    except SvgRejected as exc:
        sys.stderr.write(json.dumps({"kind": type(exc).__name__, "reason": exc.reason}))
        return _EXIT_REJECTED
    except MemoryError:
        return _EXIT_OUT_OF_MEMORY
    except (ValueError, RuntimeError) as exc:
        sys.stderr.write(str(exc))
        return _EXIT_UNDRAWABLE
    sys.stdout.buffer.write(answer + png)
    sys.stdout.buffer.flush()
    return 0
