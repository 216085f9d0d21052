"""The pages as a newcomer uses them, in a real browser, after ``tunix-rt demo``.

What is asserted is what a person sees and can do: visible text, links followed by
clicking, forms submitted, the plots present with an accessible name. Every page is
screenshotted (full page) among the test artifacts and scanned with axe-core; a
serious or critical finding fails. One pass runs with JavaScript off: the picker and
the paging are plain links and a GET form.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin

import pytest

from tests.browser.conftest import Site, screenshot, serious_violations

pytestmark = pytest.mark.browser

DATASET = "demo-arithmetic"
FAILING, BASELINE = "grpo-lr-3e-5", "grpo-step-800"
ALL_RUNS = {"sft-baseline", "grpo-step-800", "grpo-lr-3e-5", "sft-long-context",
            "grpo-step-400"}


def visit(page: Any, site: Site, path: str) -> Any:
    response = page.goto(site.url + path)
    assert response is not None and response.ok, (
        f"GET {path}: HTTP {response.status if response else '?'}")
    return response


def follow(page: Any, link: Any) -> str:
    """Click a link as a person does and wait until its page is the one shown."""
    target = urljoin(page.url, link.get_attribute("href"))
    link.click()
    page.wait_for_url(lambda url: url == target)
    return target


def only_baseline_items(site: Site, judge: str = "exact_match") -> list[str]:
    """The items the baseline got right and the failing run wrong, read from the records."""
    with sqlite3.connect(site.db_path) as db:
        rows = db.execute(
            "SELECT b.item_id FROM verdicts b JOIN evaluations eb ON eb.id = b.evaluation_id "
            "JOIN verdicts c ON c.item_id = b.item_id "
            "JOIN evaluations ec ON ec.id = c.evaluation_id "
            "WHERE eb.run_id = ? AND ec.run_id = ? AND eb.judge = ? AND ec.judge = ? "
            "AND b.passed AND NOT c.passed ORDER BY b.item_id",
            (site.baseline_run, site.failing_run, judge, judge)).fetchall()
    return [item for (item,) in rows]


def board_names(page: Any) -> list[str]:
    """The run names of the board's rows, in rank order."""
    rows = page.locator("table#leaderboard tbody tr")
    return [rows.nth(i).locator("a[href^='/runs/']").first.inner_text().strip()
            for i in range(rows.count())]


def test_the_failing_run_shows_why_it_failed(page: Any, site: Site) -> None:
    """Leaderboard → the failing run → its gate: the CI against the margin, and the items
    it got wrong that the baseline got right, with prompt, reference and both answers."""
    visit(page, site, f"/?dataset={DATASET}&judge=exact_match")
    screenshot(page, "leaderboard")
    board = page.locator("table#leaderboard")
    assert set(board_names(page)) == ALL_RUNS
    baseline_row = board.locator("tbody tr", has_text=BASELINE)
    assert baseline_row.locator(".badge.baseline").is_visible()
    failing_row = board.locator("tbody tr", has_text=FAILING)
    assert failing_row.locator(".badge.fail").is_visible()

    follow(page, failing_row.get_by_role("link", name=FAILING))
    assert page.url.endswith(f"/runs/{site.failing_run}")
    screenshot(page, "run-failing")
    assert FAILING in page.locator("h1").inner_text()
    assert "fail" in page.locator("#gates").inner_text().lower()

    # two judges gated it: follow the evidence under exact_match
    follow(page, page.locator(f"a[href^='/runs/{site.failing_run}/gate']"
                              "[href*='judge=exact_match']").first)
    screenshot(page, "gate-failing")
    assert page.locator(".badge.fail").first.is_visible()
    # the CI drawn against the margin: an image whose accessible name says both
    ci = page.get_by_role("img", name=re.compile(r"CI.*margin", re.I | re.S)).first
    assert ci.is_visible()
    assert ci.evaluate("e => e.matches('svg.plot')")
    assert page.get_by_role("link", name=re.compile("grpo-step-800")).first.is_visible()

    expected = only_baseline_items(site)
    assert expected, "the demo's failing run should miss items the baseline got right"
    # on this same page, without another click: the items where they disagree
    assert expected[0] in page.locator("table#items").inner_text()
    cell = page.locator("table#contingency a[href*='outcome=only_baseline']")
    assert cell.inner_text().strip().replace(",", "") == str(len(expected))
    follow(page, cell)
    screenshot(page, "gate-failing-only-baseline")
    rows = page.locator("table#items tbody tr")
    assert rows.count() > 0
    listed = rows.first.inner_text()
    first = expected[0]
    assert first in listed
    with sqlite3.connect(site.db_path) as db:
        prompt, reference = db.execute(
            "SELECT prompt, reference FROM dataset_items WHERE item_id = ? LIMIT 1",
            (first,)).fetchone()
        responses = [r for (r,) in db.execute(
            "SELECT v.response FROM verdicts v JOIN evaluations e ON e.id = v.evaluation_id "
            "WHERE v.item_id = ? AND e.judge = 'exact_match' AND e.run_id IN (?, ?)",
            (first, site.failing_run, site.baseline_run))]
    shown = page.locator("table#items").inner_text()
    assert prompt in shown and reference in shown
    for response in responses:
        # each answer is shown verbatim, as text (its tags too); line breaks may differ
        assert " ".join(response.split()) in " ".join(shown.split())
    ids_on_pages = _collect_items(page)
    assert ids_on_pages == expected


def _collect_items(page: Any) -> list[str]:
    """Every item id of the filtered list, following its next-page links."""
    seen: list[str] = []
    while True:
        rows = page.locator("table#items tbody tr")
        for i in range(rows.count()):
            text = rows.nth(i).inner_text()
            found = re.search(r"arith-\d{4}", text)
            if found and (not seen or seen[-1] != found.group(0)):
                seen.append(found.group(0))
        nxt = page.locator("a.next-page")
        if nxt.count() == 0:
            return seen
        follow(page, nxt.first)


def test_board_pages_by_cursor(page: Any, site: Site) -> None:
    """Two runs a page: next-page links reach every run exactly once, in rank order."""
    visit(page, site, f"/?dataset={DATASET}&judge=exact_match&limit=2")
    names: list[str] = []
    pages = 0
    while True:
        pages += 1
        screenshot(page, f"leaderboard-page-{pages}")
        names += board_names(page)
        nxt = page.locator("a.next-page")
        if nxt.count() == 0:
            break
        assert "cursor=" in follow(page, nxt.first)
    assert pages == 3
    assert sorted(names) == sorted(ALL_RUNS) and len(names) == len(ALL_RUNS)
    assert names[0] == BASELINE and names[-1] == FAILING  # best first, the regression last
    follow(page, page.get_by_role("link", name=re.compile("first page", re.I)))
    assert "cursor=" not in page.url
    assert board_names(page) == names[:2]


def test_study_page_shows_trials_and_curves(page: Any, site: Site) -> None:
    visit(page, site, "/studies")
    screenshot(page, "studies")
    follow(page, page.get_by_role("link", name="browser-sweep").first)
    assert f"/studies/{site.study_id}" in page.url
    screenshot(page, "study")
    trials = page.locator("table#trials tbody tr")
    assert trials.count() == 4
    text = page.locator("table#trials").inner_text()
    for status in ("stopped", "completed", "failed"):
        assert status in text
    curves = page.get_by_role("img", name=re.compile("accuracy", re.I))
    assert curves.count() >= 1 and curves.first.is_visible()
    assert page.locator("svg.plot").count() >= 2  # the curves and a hyperparameter scatter
    assert re.search(r"/runs/[0-9a-f]{32}$", follow(page, page.locator("a.best-run").first))
    screenshot(page, "run-best-trial")
    assert "grpo-step-400" in page.locator("h1").inner_text()
    loss = page.get_by_role("img", name=re.compile("loss", re.I)).first
    assert loss.is_visible()
    legend = loss.text_content() or ""
    assert "train_loss" in legend and "eval_loss" in legend


def test_datasets_page_links_each_board(page: Any, site: Site) -> None:
    visit(page, site, "/datasets")
    screenshot(page, "datasets")
    assert DATASET in page.locator("main").inner_text()
    follow(page, page.locator(f"a[href*='dataset={DATASET}'][href*='judge=format']").first)
    assert set(board_names(page)) == ALL_RUNS


@pytest.fixture
def no_js_page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1280,
                                                                       "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def test_picker_and_paging_work_without_javascript(no_js_page: Any, site: Site) -> None:
    """The dataset/judge picker is a GET form and paging is links: no script needed."""
    page = no_js_page
    visit(page, site, "/")
    form = page.locator("form").filter(has=page.locator("select")).first
    form.locator("select[name='dataset']").select_option(DATASET)
    form.locator("select[name='judge']").select_option("format")
    form.locator("button, input[type='submit']").first.click()
    page.wait_for_url(re.compile("judge=format"))
    screenshot(page, "leaderboard-no-js-format")
    assert set(board_names(page)) == ALL_RUNS
    visit(page, site, f"/?dataset={DATASET}&judge=format&limit=2")
    seen = board_names(page)
    while page.locator("a.next-page").count():
        assert "cursor=" in follow(page, page.locator("a.next-page").first)
        seen += board_names(page)
    assert sorted(seen) == sorted(ALL_RUNS)


# Every page, and the answers a person can meet: a run with no baseline to gate against,
# a bad cursor (400) and unknown ids (404) are pages too.
PAGES = [("/", 200), ("/?dataset={dataset}&judge=format&limit=2", 200),
         ("/?dataset={dataset}&judge=exact_match&cursor=not-a-cursor", 400),
         ("/runs/{failing}", 200), ("/runs/{baseline}", 200), ("/runs/{curves}", 200),
         ("/runs/{failing}/gate?judge=exact_match", 200),
         ("/runs/{failing}/gate?judge=exact_match&outcome=only_baseline", 200),
         ("/runs/{first}/gate?judge=exact_match", 200), ("/runs/{missing}", 404),
         ("/datasets", 200), ("/studies", 200), ("/studies/{study}", 200),
         ("/studies/{missing}", 404)]


@pytest.mark.parametrize(("template", "status"), PAGES)
def test_page_has_no_serious_accessibility_violations(page: Any, site: Site, template: str,
                                                      status: int) -> None:
    path = template.format(dataset=DATASET, failing=site.failing_run, first=site.run_ids[0],
                           curves=site.run_ids[4],
                           baseline=site.baseline_run, study=site.study_id, missing="0" * 32)
    response = page.goto(site.url + path)
    assert response is not None and response.status == status, path
    found = serious_violations(page)
    if found:  # the flows above keep a picture of each page; this one is the evidence
        screenshot(page, f"axe-{path}")
    assert not found, f"axe on {path}:\n" + "\n".join(found)


def test_the_scan_reports_what_it_should(page: Any) -> None:
    """The scan is live in this browser: a page with a nameless image and grey-on-grey
    text is reported (else every page above would pass for nothing)."""
    page.set_content('<!doctype html><html lang="en"><title>bad</title><main>'
                     '<img src="data:,"><p style="color:#bbb;background:#ccc">faint</p>'
                     '</main></html>')
    found = "\n".join(serious_violations(page))
    assert "image-alt" in found and "color-contrast" in found, found


def test_keyboard_reaches_the_content_first(page: Any, site: Site) -> None:
    """The first Tab stop is the skip link, shown when focused; it jumps past the nav."""
    visit(page, site, f"/?dataset={DATASET}&judge=exact_match")
    page.keyboard.press("Tab")
    focused = page.locator(":focus")
    assert re.search("skip to content", focused.inner_text(), re.I)
    box = focused.bounding_box()
    assert box is not None and box["x"] >= 0 and box["y"] >= 0  # on screen, not off-left
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile("#content$"))
    assert page.locator("#content").is_visible()
