"""report.html in a real headless Chromium: it renders, every embedded image decodes, and the
page logs nothing to the console.

The page carries a tiny inline script that, on load, writes 'images loaded k/n' into a hidden
element; `--dump-dom` prints the DOM after scripts ran, so the test reads the browser's own
verdict on every <img> (naturalWidth > 0). Chromium logs every console message of the page as a
CONSOLE line on stderr (all levels alike), and the report logs nothing, so any such line is an
error. Each check is first shown to catch a broken page, so a silent browser cannot pass it.

Without Chromium the tests skip, except under CI=true, where a missing browser is a failure:
.ci/run installs it.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from selfcorrect.report import write_report
from test_report_folders import make_comparison

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SCREENSHOT_COPY = Path("/tmp/report-screenshot.png")
IMAGE_CHECK = re.compile(r'id="image-check"[^>]*>images loaded (\d+)/(\d+)<')


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("CI=true but no Chromium found (looked for " + ", ".join(BROWSERS) + "); .ci/run installs it")
    pytest.skip("no Chromium installed (apt-get install chromium); set CI=true to make this a failure")


@pytest.fixture(scope="module")
def browser() -> str:
    return find_browser()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    _, html = write_report(make_comparison(tmp_path_factory.mktemp("browser") / "cmp", quick=True))
    return html


def headless(browser: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Run Chromium headless on a local file (its own profile, no sandbox: tests may run as root)."""
    command = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
               "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", "--enable-logging=stderr",
               "--v=0", "--virtual-time-budget=10000", *args, page.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def rendered(browser: str, page: Path, profile: Path) -> tuple[str, list[str]]:
    """(DOM after scripts ran, console lines)."""
    result = headless(browser, page, profile, "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout, console_lines(result.stderr)


def test_report_renders_with_every_image_loaded_and_a_silent_console(browser, report, tmp_path):
    dom, console = rendered(browser, report, tmp_path / "profile")
    assert "<h1>SCoRe vs baselines (fabricated)</h1>" in dom
    check = IMAGE_CHECK.search(dom)
    assert check, "the image check did not run: " + dom[-500:]
    loaded, total = map(int, check.groups())
    figures = len(list((report.parent / "figures").glob("*.png")))
    assert total == figures > 0 and loaded == total
    assert console == []


def test_screenshot_of_the_report(browser, report, tmp_path):
    shot = tmp_path / "report.png"
    result = headless(browser, report, tmp_path / "profile", "--window-size=1280,3200", f"--screenshot={shot}")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000  # not a blank page
    try:
        shutil.copyfile(shot, SCREENSHOT_COPY)  # for a person to look at
    except OSError:
        pass


def test_the_checks_catch_a_broken_image_and_console_errors(browser, report, tmp_path):
    html = report.read_text()
    first_image = re.search(r'src="data:image/png;base64,[^"]+"', html)
    broken = html.replace(first_image.group(0), 'src="data:image/png;base64,AAAA"', 1)
    broken = broken.replace("</main>", '<script>console.error("boom"); undefinedFunction();</script></main>', 1)
    page = tmp_path / "broken.html"
    page.write_text(broken)
    dom, console = rendered(browser, page, tmp_path / "profile")
    loaded, total = map(int, IMAGE_CHECK.search(dom).groups())
    assert loaded == total - 1
    assert any('"boom"' in line for line in console)
    assert any("Uncaught ReferenceError" in line for line in console)
