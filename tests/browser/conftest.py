"""Browser tests: Playwright (async API) driving Debian's chromium, headless.

Never a downloaded browser: `executable_path` is /usr/bin/chromium (Debian's package) and
`playwright install` is never run. One browser per test session, a fresh context (cookies,
storage) per test. The gateway runs in-process on the same asyncio loop as Playwright, so
it keeps serving while the test waits in the browser: the browser tests share one
session-scoped loop (`pytest.mark.asyncio(loop_scope="session")` in each module).

Without /usr/bin/chromium the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Error,
    Page,
    async_playwright,
    expect,
)

from gateway.sim.lab import Lab
from tests.needs import unavailable
from tests.web.kit import web_lab

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               "--disable-quic"]
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 15_000
TIMEZONE = "Europe/Berlin"  # not the gateway's (UTC on CI): times must follow the browser

expect.set_options(timeout=TIMEOUT_MS)

Shot = Callable[..., Awaitable[None]]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        message = (f"{CHROMIUM} is missing: install Debian's chromium (apt-get install "
                   "chromium); the browser tests never use a downloaded browser")
        unavailable(message)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def gw(tmp_path: Path) -> AsyncIterator[Lab]:
    """A fresh gateway (real Mosquitto) with its admin page on a free loopback port."""
    async with web_lab(tmp_path / "state") as lab:
        yield lab


def _is_noise(message: ConsoleMessage) -> bool:
    # A fetch answered 401/403/429 is logged by chromium as "Failed to load resource";
    # those answers are what several tests provoke on purpose.
    return "Failed to load resource" in message.text


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A page in a new context; fails the test on any script error or CSP violation."""
    context = await browser.new_context(viewport=DESKTOP, locale="en-GB",
                                        timezone_id=TIMEZONE)
    context.set_default_timeout(TIMEOUT_MS)
    opened = await context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    opened.on("console", lambda m: problems.append(f"console: {m.text}")
              if m.type == "error" and not _is_noise(m) else None)
    try:
        yield opened
    finally:
        with contextlib.suppress(Error):  # the browser may be gone already
            await context.close()
    assert not problems, "the page logged errors:\n" + "\n".join(problems)


@pytest.fixture
def shot(page: Page, request: pytest.FixtureRequest) -> Shot:
    """`await shot()` saves a full-page screenshot as artifacts/screenshots/<test>.png;
    `shot("step")` as <test>-step.png; `phone=True` also saves <name>-phone.png at 390x844
    and checks that nothing sticks out sideways on the phone."""

    async def take(step: str = "", *, phone: bool = False) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        name = request.node.name + (f"-{step}" if step else "")
        await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
        if phone:
            await page.set_viewport_size(PHONE)
            try:
                await page.wait_for_timeout(300)  # the chart redraws for the new width
                overflow = await page.evaluate(
                    "document.documentElement.scrollWidth - window.innerWidth")
                await page.screenshot(path=str(SCREENSHOTS / f"{name}-phone.png"),
                                      full_page=True)
            finally:
                await page.set_viewport_size(DESKTOP)
                await page.wait_for_timeout(300)
            assert overflow <= 0, f"{name}: the page is {overflow}px wider than a phone"

    return take
