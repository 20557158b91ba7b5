"""Headless Chromium for tests: the system browser, driven by Playwright for Python.

Playwright talks to ``/usr/bin/chromium`` (Debian's package; ``make test`` installs
it when missing); its own browser downloads are never used. :meth:`Browser.load`
opens a page and reports what happened while it loaded: console errors and
uncaught exceptions, every request, JavaScript dialogs (an executed ``alert``),
the DOM after load (:data:`DOM_PROBE`) and a screenshot. :meth:`Browser.page`
gives a page with the same observers for tests that click and type.
"""

from __future__ import annotations

import io
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageLoad:
    """Everything observed while one page loaded."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    """Uncaught exceptions, console.error/assert calls and browser errors (failed loads, CSP)."""
    requests: list[str] = field(default_factory=list)
    """URL of every request the page made, the page itself included."""
    dialogs: list[str] = field(default_factory=list)
    """``type: message`` of JavaScript dialogs (alert, confirm, prompt) the page opened."""
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
    javascript_links: Array.from(document.querySelectorAll('[href], [src], [action]')).filter(
      (e) => /^\\s*javascript:/i.test(e.getAttribute('href') || e.getAttribute('src') || e.getAttribute('action') || '')
    ).length,
    text: document.body ? document.body.textContent : '',
    title: document.title,
    height: document.documentElement.scrollHeight,
  };
})()"""


class Browser:
    """One headless Chromium; pages are opened in fresh contexts (no shared cookies)."""

    def __init__(self, executable: str, *, width: int = 1280, height: int = 2000) -> None:
        from playwright.sync_api import sync_playwright

        self.width, self.height = width, height
        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=executable,
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
            )
        except Exception:
            self._playwright.stop()
            raise

    def page(self, url: str = "") -> tuple[Any, PageLoad]:
        """A new page in its own context, and the :class:`PageLoad` its observers fill in."""
        context = self._browser.new_context(viewport={"width": self.width, "height": self.height})
        page = context.new_page()
        seen = PageLoad(url=url)

        def on_console(message: Any) -> None:
            if message.type in ("error", "assert"):
                seen.console_errors.append(f"console.{message.type}: {message.text}")

        def on_dialog(dialog: Any) -> None:
            seen.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.accept()  # an open alert() blocks the page until answered

        page.on("console", on_console)
        page.on("pageerror", lambda error: seen.console_errors.append(f"uncaught: {error}"))
        page.on("request", lambda request: seen.requests.append(request.url))
        page.on("dialog", on_dialog)
        return page, seen

    def observe(self, page: Any, seen: PageLoad) -> PageLoad:
        """Fill in the DOM probe and a screenshot of ``page`` as it is now."""
        seen.dom = page.evaluate(DOM_PROBE)
        seen.screenshot_png = page.screenshot(
            clip={"x": 0, "y": 0, "width": self.width, "height": self.height}
        )
        return seen

    def load(
        self, target: Path | str, *, timeout_s: float = 30.0, settle_s: float = 0.5
    ) -> PageLoad:
        """Open a file or URL; return its errors, requests, dialogs, DOM and screenshot."""
        url = target.resolve().as_uri() if isinstance(target, Path) else target
        page, seen = self.page(url)
        try:
            page.goto(url, wait_until="load", timeout=timeout_s * 1000)
            page.wait_for_timeout(settle_s * 1000)
            return self.observe(page, seen)
        finally:
            page.context.close()

    def close(self) -> None:
        try:
            self._browser.close()
        finally:
            self._playwright.stop()


def colour_profile(png: bytes) -> tuple[int, float]:
    """(distinct colours, share of the most common colour) of a screenshot."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(1 << 24)  # [(count, colour), ...]
    return len(colours), max(count for count, _ in colours) / (image.width * image.height)


def looks_blank(png: bytes) -> bool:
    distinct, commonest_share = colour_profile(png)
    return distinct < 24 or commonest_share > 0.97


if __name__ == "__main__":  # python tests/browser.py FILE.html: print what the browser saw
    browser = Browser(find_chromium() or sys.exit("chromium not found"))
    try:
        loaded = browser.load(Path(sys.argv[1]))
    finally:
        browser.close()
    print({**loaded.dom, "text": loaded.dom.get("text", "")[:200]})
    print(
        "errors:", loaded.console_errors, "requests:", loaded.requests, "dialogs:", loaded.dialogs
    )
