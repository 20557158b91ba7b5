"""Headless Chromium for tests: find or install it, load a page, read what happened.

The browser is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
the browser reads JSON commands, NUL-terminated, from fd 3 and writes replies and
events to fd 4), so no websocket client and no network port are needed. From one
page load we get the console errors and uncaught exceptions, every request the
page made, JavaScript dialogs (an executed ``alert``), the DOM after load, and a
screenshot. :func:`png_pixels` decodes the screenshot with zlib alone (Pillow is
not a dependency).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser")
APT_PACKAGE = "chromium"  # Debian's package; Ubuntu's is a snap shim and is not tried


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def may_install_system_packages() -> tuple[bool, str]:
    """Whether the test run may ``apt-get install``, and why not when it may not."""
    if shutil.which("apt-get") is None:
        return False, "apt-get is not available (not a Debian-like system)"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, "not running as root, so apt-get cannot install packages"
    non_interactive = (
        bool(os.environ.get("CI"))
        or os.environ.get("PREFKIT_INSTALL_BROWSER") == "1"
        or not os.isatty(0)
    )
    if not non_interactive:
        return False, (
            "interactive session without CI set; set PREFKIT_INSTALL_BROWSER=1 (or CI=1) "
            "to let the tests install it"
        )
    return True, ""


def install_chromium(timeout_s: float = 900.0) -> tuple[str | None, str]:
    """Install Debian's ``chromium`` with apt-get; returns (path or None, log of what was tried).

    ``apt-get install`` is tried first; when it fails (typically: empty package
    lists on a fresh image), ``apt-get update`` runs and the install is retried.
    """
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", APT_PACKAGE]
    log: list[str] = []
    for commands in ([install], [["apt-get", "update"], install]):
        for command in commands:
            started = time.monotonic()
            try:
                result = subprocess.run(
                    command, env=env, capture_output=True, text=True, timeout=timeout_s
                )
            except (OSError, subprocess.TimeoutExpired) as error:
                log.append(f"{' '.join(command)}: {error}")
                break
            log.append(
                f"{' '.join(command)}: exit {result.returncode} after "
                f"{time.monotonic() - started:.0f} s; {result.stderr.strip()[-300:]}"
            )
            if result.returncode != 0:
                break
        found = find_chromium()
        if found:
            return found, "\n".join(log)
    return None, "\n".join(log)


@dataclass
class PageLoad:
    """Everything observed while one page loaded."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    """Uncaught exceptions, console.error/assert calls, and browser log entries at level error."""
    requests: list[str] = field(default_factory=list)
    """URL of every request the page made, the page itself included."""
    dialogs: list[str] = field(default_factory=list)
    """Messages of JavaScript dialogs (alert, confirm, prompt) the page opened."""
    dom: dict[str, Any] = field(default_factory=dict)
    """The result of :data:`DOM_PROBE` evaluated after load."""
    screenshot_png: bytes = b""


DOM_PROBE = """(() => {
  const elements = Array.from(document.querySelectorAll('*'));
  const handlers = [];
  for (const element of elements) {
    for (const attribute of element.attributes) {
      if (attribute.name.toLowerCase().startsWith('on')) handlers.push(element.tagName + '[' + attribute.name + ']');
    }
  }
  return {
    scripts: document.querySelectorAll('script').length,
    images: document.querySelectorAll('img').length,
    iframes: document.querySelectorAll('iframe, object, embed').length,
    handlers: handlers,
    svgs: document.querySelectorAll('svg').length,
    text: document.body ? document.body.textContent : '',
    title: document.title,
    height: document.documentElement.scrollHeight,
  };
})()"""


class Chromium:
    """One headless Chromium process driven over ``--remote-debugging-pipe``."""

    def __init__(self, executable: str, *, width: int = 1280, height: int = 2000) -> None:
        self.width = width
        self.height = height
        self._profile = tempfile.TemporaryDirectory(prefix="prefkit-chromium-")
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        arguments = [
            executable,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--mute-audio",
            f"--window-size={width},{height}",
            f"--user-data-dir={self._profile.name}",
            "--remote-debugging-pipe",
            "about:blank",
        ]

        def wire_pipes() -> None:  # runs in the child: the protocol wants fds 3 and 4
            # (os.dup2 makes its target inheritable, so 3 and 4 survive exec)
            high_read = os.dup(to_browser_read)
            high_write = os.dup(from_browser_write)
            while high_read in (3, 4) or high_write in (3, 4):
                high_read, high_write = os.dup(high_read), os.dup(high_write)
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        self._process = subprocess.Popen(
            arguments,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # close_fds would close 3 and 4 after wire_pipes ran; with it off, only
            # inheritable fds survive exec, and os.pipe/os.dup fds are not inheritable.
            close_fds=False,
            preexec_fn=wire_pipes,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr_lines: list[str] = []
        threading.Thread(target=self._read_messages, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self._replies: dict[int, dict[str, Any]] = {}

    # ------------------------------------------------------------------ protocol

    def _read_messages(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self._messages.put(None)
                return
            buffer += chunk
            *complete, buffer = buffer.split(b"\0")
            for message in complete:
                self._messages.put(json.loads(message))

    def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self._stderr_lines.append(line.decode("utf-8", "replace").rstrip())

    def _receive(self, deadline: float) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for Chromium")
        try:
            message = self._messages.get(timeout=remaining)
        except queue.Empty:
            raise TimeoutError("timed out waiting for Chromium") from None
        if message is None:
            tail = "\n".join(self._stderr_lines[-20:])
            raise RuntimeError(f"Chromium closed the DevTools pipe; its stderr ends with:\n{tail}")
        return message

    def _write(self, method: str, params: dict[str, Any] | None, session: str | None) -> int:
        self._next_id += 1
        command: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            command["sessionId"] = session
        os.write(self._to_browser, json.dumps(command).encode() + b"\0")
        return self._next_id

    def _pump(self, deadline: float) -> None:
        """Take one message: keep a reply by id, an event in order; dismiss dialogs at once."""
        message = self._receive(deadline)
        if "id" in message:
            self._replies[message["id"]] = message
            return
        self._events.append(message)
        if message.get("method") == "Page.javascriptDialogOpening":
            # An open alert() blocks the page (and its load event) until answered.
            self._write("Page.handleJavaScriptDialog", {"accept": True}, message.get("sessionId"))

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout_s: float = 30.0,
    ) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        command_id = self._write(method, params, session)
        deadline = time.monotonic() + timeout_s
        while command_id not in self._replies:
            self._pump(deadline)
        reply = self._replies.pop(command_id)
        if "error" in reply:
            raise RuntimeError(f"{method} failed: {reply['error']}")
        return reply.get("result", {})

    def _wait_for_event(self, method: str, session: str, deadline: float) -> None:
        while True:
            if any(
                e.get("method") == method and e.get("sessionId") == session for e in self._events
            ):
                return
            self._pump(deadline)

    def _drain(self, quiet_s: float) -> None:
        """Collect events until none has arrived for ``quiet_s`` seconds."""
        while True:
            try:
                self._pump(time.monotonic() + quiet_s)
            except TimeoutError:
                return

    # ---------------------------------------------------------------------- pages

    def load(self, path: Path, *, timeout_s: float = 30.0, settle_s: float = 0.5) -> PageLoad:
        """Open ``path`` in a fresh tab; return its errors, requests, dialogs, DOM and screenshot."""
        url = path.resolve().as_uri()
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        self._events = [e for e in self._events if e.get("sessionId") != session]
        self.send("Page.navigate", {"url": url}, session=session)
        self._wait_for_event("Page.loadEventFired", session, time.monotonic() + timeout_s)
        self._drain(settle_s)
        page = PageLoad(url=url)
        for event in self._events:
            if event.get("sessionId") != session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                description = details.get("exception", {}).get("description", "")
                page.console_errors.append(f"uncaught: {details.get('text', '')} {description}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                values = [
                    str(a.get("value", a.get("description", ""))) for a in params.get("args", [])
                ]
                page.console_errors.append(f"console.{params['type']}: {' '.join(values)}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                page.console_errors.append(f"log: {params['entry'].get('text', '')}")
            elif method == "Network.requestWillBeSent":
                page.requests.append(params["request"]["url"])
            elif method == "Page.javascriptDialogOpening":
                page.dialogs.append(f"{params.get('type', '')}: {params.get('message', '')}")
        page.dom = self.send(
            "Runtime.evaluate", {"expression": DOM_PROBE, "returnByValue": True}, session=session
        )["result"]["value"]
        shot = self.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "clip": {"x": 0, "y": 0, "width": self.width, "height": self.height, "scale": 0.25},
            },
            session=session,
        )
        page.screenshot_png = base64.b64decode(shot["data"])
        self.send("Target.closeTarget", {"targetId": target})
        self._events = [e for e in self._events if e.get("sessionId") != session]
        return page

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout_s=5.0)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._to_browser)
        self._profile.cleanup()


# ------------------------------------------------------------------------------ PNG


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB or RGBA, non-interlaced PNG into (width, height, pixels).

    Pixels are returned as ``bytes`` of length 3 or 4, row by row. Enough of the
    format for Chromium's screenshots; anything else raises ``ValueError``.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    position = 8
    compressed = b""
    width = height = bit_depth = colour_type = interlace = 0
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed += body
        elif kind == b"IEND":
            break
    channels = {2: 3, 6: 4}.get(colour_type)
    if bit_depth != 8 or channels is None or interlace:
        raise ValueError(
            f"unsupported PNG: bit depth {bit_depth}, colour type {colour_type}, interlace {interlace}"
        )
    raw = zlib.decompress(compressed)
    stride = width * channels
    previous = bytearray(stride)
    pixels: list[bytes] = []
    for row_index in range(height):
        start = row_index * (stride + 1)
        filter_type = raw[start]
        row = bytearray(raw[start + 1 : start + 1 + stride])
        if filter_type == 1:  # Sub
            for i in range(channels, stride):
                row[i] = (row[i] + row[i - channels]) & 0xFF
        elif filter_type == 2:  # Up
            for i in range(stride):
                row[i] = (row[i] + previous[i]) & 0xFF
        elif filter_type == 3:  # Average
            for i in range(stride):
                left = row[i - channels] if i >= channels else 0
                row[i] = (row[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif filter_type == 4:  # Paeth
            for i in range(stride):
                left = row[i - channels] if i >= channels else 0
                up = previous[i]
                up_left = previous[i - channels] if i >= channels else 0
                estimate = left + up - up_left
                distance_left = abs(estimate - left)
                distance_up = abs(estimate - up)
                distance_up_left = abs(estimate - up_left)
                if distance_left <= distance_up and distance_left <= distance_up_left:
                    predictor = left
                elif distance_up <= distance_up_left:
                    predictor = up
                else:
                    predictor = up_left
                row[i] = (row[i] + predictor) & 0xFF
        elif filter_type != 0:
            raise ValueError(f"row {row_index}: unknown PNG filter type {filter_type}")
        pixels.extend(bytes(row[i : i + channels]) for i in range(0, stride, channels))
        previous = row
    return width, height, pixels


if __name__ == "__main__":  # python tests/browser.py FILE.html: print what the browser saw
    browser = Chromium(find_chromium() or sys.exit("chromium not found"))
    try:
        loaded = browser.load(Path(sys.argv[1]))
    finally:
        browser.close()
    print(json.dumps({**loaded.dom, "text": loaded.dom.get("text", "")[:200]}, indent=1))
    print(
        "errors:", loaded.console_errors, "requests:", loaded.requests, "dialogs:", loaded.dialogs
    )
