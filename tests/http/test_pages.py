"""The pages over real HTTP (uvicorn), on SQLite and PostgreSQL: the leaderboard, a run,
the datasets. The HTML is parsed (stdlib html.parser) and its SVG with xml.etree, so the
assertions name elements, not string snapshots."""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from sqlalchemy import Engine, event, insert, update

from tests.db.support import JUDGE, evaluate, evaluated_run
from tests.factories import correctness, make_run, write_predictions
from tests.http.conftest import Service, serve_app
from tunix_rt.quality.gating import gate_run, set_baseline
from tunix_rt.quality.leaderboard import rebuild_leaderboard
from tunix_rt.quality.stats import GatePolicy
from tunix_rt.store.db import session_scope
from tunix_rt.store.metrics import record_points
from tunix_rt.store.models import Evaluation, Run, RunMetric, Study, Trial, utcnow

XSS = "<script>alert(1)</script>"
SVG = "{http://www.w3.org/2000/svg}"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


# --- a small HTML tree ----------------------------------------------------------------


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def iter(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.iter()

    def find_all(self, selector: str) -> list[Node]:
        """``tag``, ``#id``, ``.class``, ``tag.class`` or ``tag#id`` (one level, no spaces)."""
        m = re.fullmatch(r"([a-z0-9]*)((?:[.#][\w-]+)*)", selector)
        assert m, selector
        tag, rest = m.group(1), re.findall(r"([.#])([\w-]+)", m.group(2))
        return [n for n in self.iter() if (not tag or n.tag == tag)
                and all((n.attrs.get("id") == v) if k == "#" else (v in n.classes)
                        for k, v in rest)]

    def find(self, selector: str) -> Node:
        found = self.find_all(selector)
        assert len(found) == 1, f"{selector}: {len(found)} matches"
        return found[0]

    @property
    def text(self) -> str:
        return " ".join(" ".join(n.text_parts) for n in self.iter()).strip()


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].text_parts.append(data)


def parse(response: httpx.Response, status: int = 200) -> Node:
    assert response.status_code == status, response.text[:2000]
    assert response.headers["content-type"].startswith("text/html")
    builder = _Builder()
    builder.feed(response.text)
    return builder.root


def svgs(response: httpx.Response, kind: str) -> list[ET.Element]:
    """The inline SVGs of a page whose class names ``kind``, parsed as XML."""
    found = [ET.fromstring(m) for m in re.findall(r"<svg .*?</svg>", response.text, re.S)]
    return [s for s in found if kind in s.get("class", "").split()]


def svg_class(root: ET.Element, cls: str) -> list[ET.Element]:
    return [e for e in root.iter() if cls in (e.get("class") or "").split()]


# --- data -----------------------------------------------------------------------------


def _hits(n: int, right: int) -> list[bool]:
    return [i < right for i in range(n)]


def _rebuild(engine: Engine, dataset: str = "arith", judge: str = JUDGE) -> None:
    with session_scope(engine) as session:
        rebuild_leaderboard(session, dataset, judge)


def _board(engine: Engine, tmp_path: Path) -> dict[str, str]:
    """Four runs of ``arith`` (0.9, 0.6, 0.5 named <script>, 0.3 of 40 items); ``best`` is
    the baseline, ``mid`` was gated against it."""
    ids = {name: evaluated_run(engine, tmp_path, name, _hits(40, right))
           for name, right in (("mid", 24), ("best", 36), ("worst", 12))}
    xss = make_run(engine, tmp_path, XSS, [],
                   predictions=write_predictions(tmp_path / "xss.jsonl", _hits(40, 20)))
    evaluate(engine, xss)
    ids["xss"] = xss
    with session_scope(engine) as session:
        set_baseline(session, ids["best"], JUDGE)
        gate_run(session, ids["mid"], JUDGE, GatePolicy(min_items=10))
    _rebuild(engine)
    return ids


# --- the leaderboard ------------------------------------------------------------------


def test_the_board_shows_ranks_bars_the_baseline_and_gates(service: Service, engine: Engine,
                                                           tmp_path: Path) -> None:
    ids = _board(engine, tmp_path)
    response = service.get("/")
    doc = parse(response)
    table = doc.find("table#leaderboard")
    rows = table.find_all("tr.entry")
    assert [r.attrs["id"] for r in rows] == [f"run-{ids[n]}"
                                             for n in ("best", "mid", "xss", "worst")]
    assert [r.find("td.rank").text for r in rows] == ["1", "2", "3", "4"]
    assert [r.find("td.score").text for r in rows] == ["0.9000", "0.6000", "0.5000", "0.3000"]
    # Each run links to its page; the hostile name is text, not markup.
    links = [r.find("td.run").find_all("a")[0] for r in rows]
    assert [a.attrs["href"] for a in links] == [f"/runs/{ids[n]}"
                                                for n in ("best", "mid", "xss", "worst")]
    assert links[2].text == XSS
    assert XSS not in response.text and html.escape(XSS) in response.text
    # The baseline's badge, on its row only.
    assert [bool(r.find_all("span.badge.baseline")) for r in rows] == [True, False, False, False]
    # The gate: a badge on the gated run, linking to its evidence under this judge.
    badge = rows[1].find("a.badge.gate")
    assert badge.text == "fail" and "fail" in badge.classes  # 0.6 against 0.9
    assert badge.attrs["href"] == f"/runs/{ids['mid']}/gate?judge={JUDGE}"
    assert [r.find_all("a.badge.gate") for r in rows[2:]] == [[], []]
    # Bars: one per row, all on one scale; the dots follow the scores, the baseline's
    # score is a mark on each.
    bars = svgs(response, "interval")
    assert len(bars) == 4
    assert {(b.get("data-lo"), b.get("data-hi")) for b in bars} == {("0", "1")}
    dots = [float(svg_class(b, "value")[0].get("cx")) for b in bars]
    assert dots == sorted(dots, reverse=True)
    for bar in bars:
        (mark,) = svg_class(bar, "mark")
        assert mark.get("data-value") == "0.9"
        assert bar.get("role") == "img" and "95% CI" in bar.get("aria-label")
        (ci,) = svg_class(bar, "ci")
        assert float(ci.get("data-low")) <= float(svg_class(bar, "value")[0].get("data-value"))
    # Coverage and items, and the page explains the flags it keeps.
    assert [r.find("td.coverage").text for r in rows] == ["100.0%"] * 4
    assert [r.find("td.items").text for r in rows] == ["40"] * 4
    assert "ranked below" in doc.find("section.notes").text
    # One board: the picker offers it, selected.
    picker = doc.find("form.picker")
    assert picker.attrs["method"] == "get"
    dataset = picker.find("select#pick-dataset")
    assert [(o.attrs["value"], "selected" in o.attrs) for o in dataset.find_all("option")] \
        == [("arith", True)]
    assert doc.find("nav.pager").find_all("a.next-page") == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # page logic only: SQLite is enough
def test_flagged_entries_say_why_they_rank_below(service: Service, engine: Engine,
                                                 tmp_path: Path) -> None:
    full = evaluated_run(engine, tmp_path, "full", _hits(10, 6))
    short = make_run(engine, tmp_path, "short", [],
                     predictions=write_predictions(tmp_path / "short.jsonl", [True] * 4))
    evaluate(engine, short)
    old = evaluated_run(engine, tmp_path, "old", _hits(10, 9))
    with session_scope(engine) as session:  # evaluated before datasets were recorded
        session.execute(update(Evaluation).where(Evaluation.run_id == old)
                        .values(n_missing=None, dataset_id=None))
    _rebuild(engine)
    doc = parse(service.get("/", dataset="arith"))
    rows = {r.attrs["id"]: r for r in doc.find("table#leaderboard").find_all("tr.entry")}
    assert rows[f"run-{short}"].find("td.coverage").text == "40.0%"
    assert rows[f"run-{full}"].find("td.coverage").text == "100.0%"
    old_row = rows[f"run-{old}"]
    assert "coverage_unknown" in old_row.classes
    assert "unknown" in old_row.find("td.coverage").text
    assert "evaluated before datasets: ranked below" in old_row.find("td.coverage").text
    assert list(rows)[-1] == f"run-{old}"  # 0.9, yet last


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_paging_by_cursor_reaches_every_run_exactly_once(service: Service, engine: Engine,
                                                         tmp_path: Path) -> None:
    ids = {evaluated_run(engine, tmp_path, f"r{i}", _hits(10, i)) for i in range(8)}
    _rebuild(engine)
    seen: list[str] = []
    ranks: list[int] = []
    url, pages = "/?dataset=arith&limit=3", 0
    while url:
        pages += 1
        doc = parse(httpx.get(service.url + url, timeout=30))  # the link as it is
        rows = doc.find("table#leaderboard").find_all("tr.entry")
        seen += [r.attrs["id"].removeprefix("run-") for r in rows]
        ranks += [int(r.find("td.rank").text) for r in rows]
        caption = doc.find("table#leaderboard").find("caption").text
        assert f"ranks {ranks[-len(rows)]}–{ranks[-1]} of 8" in caption
        pager = doc.find("nav.pager")
        if pages > 1:  # back to the start from any later page
            first = pager.find("a.first-page").attrs["href"]
            assert "cursor" not in parse_qs(urlparse(first).query)
        nxt = pager.find_all("a.next-page")
        url = nxt[0].attrs["href"] if nxt else ""
        if url:
            assert parse_qs(urlparse(url).query)["limit"] == ["3"]
    assert pages == 3
    assert len(seen) == len(set(seen)) == 8 and set(seen) == ids
    assert ranks == list(range(1, 9))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # page logic only: SQLite is enough
def test_the_picker_and_bad_links(service: Service, engine: Engine, tmp_path: Path) -> None:
    empty = parse(service.get("/"))
    assert "No leaderboards yet" in empty.find("p#no-boards").text
    assert empty.find_all("table") == []

    evaluated_run(engine, tmp_path, "arith-run", _hits(10, 5))
    evaluated_run(engine, tmp_path, "zeta-run", _hits(10, 7), dataset="zeta")
    _rebuild(engine)
    _rebuild(engine, dataset="zeta")
    default = parse(service.get("/"))
    options = default.find("select#pick-dataset").find_all("option")
    assert [o.attrs["value"] for o in options] == ["arith", "zeta"]
    assert [o.attrs["href"] for o in default.find("nav.boards").find_all("a")] == [
        f"/?dataset=arith&judge={JUDGE}", f"/?dataset=zeta&judge={JUDGE}"]
    # The form's GET, as a browser without script sends it.
    zeta = parse(service.get("/", dataset="zeta", judge=JUDGE))
    assert "zeta-run" in zeta.find("table#leaderboard").text
    assert "arith-run" not in zeta.find("table#leaderboard").text
    assert "selected" in [o for o in zeta.find("select#pick-dataset").find_all("option")
                          if o.attrs["value"] == "zeta"][0].attrs
    # Empty fields are no choice: the first board.
    blank = parse(httpx.get(f"{service.url}/?dataset=&judge=", timeout=30))
    assert "arith-run" in blank.find("table#leaderboard").text
    # An unknown board: a 404 page naming it (escaped), with the boards that exist.
    missing = service.get("/", dataset=XSS, judge=JUDGE)
    doc = parse(missing, 404)
    assert "There is no leaderboard for dataset" in doc.find("p#problem").text
    assert XSS in doc.find("p#problem").text and XSS not in missing.text
    assert f"/?dataset=zeta&judge={JUDGE}" in [a.attrs["href"] for a in doc.find_all("a")]
    assert "unknown judge" not in missing.text
    assert parse(service.get("/", dataset="arith", judge="no-such-judge"), 404)
    # A cursor not made here: a 400 page that names it and links to the first page.
    for cursor in ("garbage", "eyJ4IjogMX0", "Zm9v"):
        doc = parse(service.get("/", dataset="arith", cursor=cursor), 400)
        assert "cursor" in doc.find("p#problem").text
        assert f"/?dataset=arith&judge={JUDGE}" in [a.attrs["href"] for a in doc.find_all("a")]


# --- a run ----------------------------------------------------------------------------


@pytest.fixture
def jobs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "jobs"
    folder.mkdir()
    monkeypatch.setenv("TUNIX_RT_JOBS_DIR", str(folder))
    return folder


@pytest.fixture
def page_service(webhook_env: str, jobs_dir: Path) -> Iterator[Service]:
    """The receiver, configured with ``jobs_dir`` (where launched jobs' logs are read)."""
    from tunix_rt.service.server import create_app

    yield from serve_app(create_app())


def _launched_trial_run(engine: Engine, tmp_path: Path, jobs_dir: Path) -> dict[str, str]:
    """A run a study's trial produced and `tunix-rt train` launched: series, a log, two
    evaluations, gated twice against a baseline."""
    baseline = evaluated_run(engine, tmp_path, "the-baseline", correctness(60, 0.5, seed=3))
    run = evaluated_run(engine, tmp_path, "trial-run", correctness(60, 0.8, seed=4))
    evaluate(engine, run, "mock")
    log = jobs_dir / run / "job.log"
    log.parent.mkdir()
    log.write_text("".join(f"line {i}\n" for i in range(1000)) + f"{XSS}\nlast line\n")
    with session_scope(engine) as session:
        study = Study(name="lr-sweep", dataset="arith", metric="accuracy", mode="max",
                      spec={}, storage_path="/nowhere", status="completed")
        session.add(study)
        session.flush()
        study_id = study.id
        session.add(Trial(study_id=study_id, trial_id="trial_00042", config={"lr": 3e-4},
                          status="completed", iterations=7, run_id=run))
        session.execute(update(Run).where(Run.id == run).values(
            origin="train", exit_code=0, log_uri=log.as_uri(), study_id=study_id,
            trial_id="trial_00042", config={"lr": 3e-4, "epochs": 2, "name": XSS},
            metrics={"accuracy": 0.8}))
        record_points(session, run, [("train_loss", s, 2.0 / (s + 1)) for s in range(50)]
                      + [("train_loss", 50, None)]
                      + [("eval_loss", s, 2.2 / (s + 1)) for s in range(0, 60, 10)]
                      + [("accuracy", s, 0.5 + s / 200) for s in range(0, 60, 10)])
        set_baseline(session, baseline, JUDGE)
        gate_run(session, run, JUDGE, GatePolicy(min_items=10))
        gate_run(session, run, JUDGE, GatePolicy(min_items=10, margin=0.05))
    _rebuild(engine)
    return {"run": run, "baseline": baseline, "study": study_id}


def test_the_run_page_shows_lineage_curves_log_evaluations_and_gates(
        page_service: Service, engine: Engine, tmp_path: Path, jobs_dir: Path) -> None:
    ids = _launched_trial_run(engine, tmp_path, jobs_dir)
    response = page_service.get(f"/runs/{ids['run']}")
    doc = parse(response)
    assert "trial-run" in doc.find("h1").text
    assert doc.find("dd.origin").text == "train"
    # Lineage: the study (linked) and the trial.
    lineage = doc.find("section#lineage")
    assert lineage.find("a.study").attrs["href"] == f"/studies/{ids['study']}"
    assert lineage.find("a.study").text == "lr-sweep"
    assert lineage.find("code.trial-id").text == "trial_00042"
    assert "7 iterations" in lineage.text
    # The loss curves: train and eval on one chart with axis labels and a legend; the
    # other metric on its own.
    (loss,) = [s for s in svgs(response, "line-chart")
               if s.find(f"{SVG}title").text == "Loss over steps"]
    assert [e.text for e in svg_class(loss, "axis-label")] == ["step", "loss"]
    assert [s.get("data-name") for s in svg_class(loss, "series")] == ["eval_loss",
                                                                      "train_loss"]
    assert len(svg_class(loss, "legend-item")) == 2
    train = svg_class(loss, "series")[1]
    assert sum(len(l.get("points").split()) for l in svg_class(train, "line")) == 50
    assert loss.get("role") == "img" and loss.get("aria-labelledby")
    assert len(svgs(response, "line-chart")) == 2
    caption = doc.find("section#metrics").find_all("figcaption")[0].text
    assert "train_loss: 51 points" in caption and "1 not finite" in caption
    # The log tail: the last 200 lines, escaped.
    tail = doc.find("pre#log-tail").text
    lines = tail.splitlines()
    assert len(lines) == 200 and lines[-1] == "last line" and lines[-2] == XSS
    assert lines[0] == "line 802"
    assert XSS not in response.text
    # Config as stored, escaped.
    config = {r.find("th").text: r.find("td").text
              for r in doc.find("section#config").find_all("tr")}
    assert config == {"epochs": "2", "lr": "0.0003", "name": XSS}
    # Evaluations per judge, with coverage and the cost column.
    evals = doc.find("table#evaluation-table").find_all("tr.evaluation")
    assert sorted(r.find_all("td")[0].text.split()[0] for r in evals) == [JUDGE, "mock"]
    assert all("100.0%" in r.text for r in evals)
    assert len(svgs(response, "interval")) >= 2
    # The gate history: both results, newest first, each linking to the evidence of its
    # judge (two judges evaluated it, so the judge is named).
    gates = doc.find("table#gate-history").find_all("tr.gate-result")
    assert len(gates) == 2
    times = [g.find_all("td")[0].text for g in gates]
    assert times == sorted(times, reverse=True)
    for g in gates:
        badge = g.find("a.badge.gate")
        assert badge.attrs["href"] == f"/runs/{ids['run']}/gate?judge={JUDGE}"
        assert g.find_all("a")[1].attrs["href"] == f"/runs/{ids['baseline']}"
    assert [a.attrs["href"] for a in doc.find_all("a.gate-page")] == [
        f"/runs/{ids['run']}/gate?judge={JUDGE}"]  # gated under one judge of the two
    # The boards it is on.
    assert [a.attrs["href"] for a in doc.find("dd.boards").find_all("a")] == [
        f"/?dataset=arith&judge={JUDGE}"]
    margins = [float(m.get("data-value")) for b in svgs(response, "interval")
               for m in svg_class(b, "mark")]
    assert -0.05 in margins and 0.0 in margins


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # page logic only: SQLite is enough
def test_the_run_page_of_a_plain_run_and_an_unknown_one(page_service: Service, engine: Engine,
                                                        tmp_path: Path) -> None:
    run = make_run(engine, tmp_path, XSS, _hits(10, 3))
    response = page_service.get(f"/runs/{run}")
    doc = parse(response)
    assert XSS in doc.find("span.run-name").text and XSS not in response.text
    assert doc.find_all("pre#log-tail") == [] and doc.find_all("section#job") == []
    assert "Not evaluated yet" in doc.find("section#evaluations").text
    assert "Not gated yet" in doc.find("section#gates").text
    assert "No metrics over steps" in doc.find("section#metrics").text
    # A log outside the jobs folder is not read.
    with session_scope(engine) as session:
        session.execute(update(Run).where(Run.id == run).values(
            origin="train", log_uri=Path("/etc/hostname").as_uri()))
    doc = parse(page_service.get(f"/runs/{run}"))
    assert doc.find_all("pre#log-tail") == []
    assert "outside this service's jobs folder" in doc.find("p.log-missing").text

    missing = parse(page_service.get("/runs/no-such-run<b>"), 404)
    assert "no run with id or external id" in missing.find("p#problem").text


# --- datasets -------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # page logic only: SQLite is enough
def test_the_datasets_page_links_each_board(service: Service, engine: Engine,
                                            tmp_path: Path) -> None:
    assert "No datasets yet" in parse(service.get("/datasets")).find("p#no-datasets").text
    evaluated_run(engine, tmp_path, "one", _hits(10, 5))
    evaluated_run(engine, tmp_path, "two", _hits(12, 5), dataset="zeta")
    _rebuild(engine)
    _rebuild(engine, dataset="zeta")
    doc = parse(service.get("/datasets"))
    rows = doc.find("table#datasets").find_all("tr.dataset")
    assert [r.find("th.name").text for r in rows] == ["arith", "zeta"]
    cells = [[td.text for td in r.find_all("td")] for r in rows]
    assert cells[0][:3] == ["v1", "1", "10"] and cells[1][:3] == ["v1", "1", "12"]
    assert cells[0][3].startswith("implicit")
    assert [a.attrs["href"] for a in rows[1].find("td.boards").find_all("a")] == [
        f"/?dataset=zeta&judge={JUDGE}"]


# --- cost -----------------------------------------------------------------------------


class _Statements:
    """Counts the SQL statements the engine runs (the server runs in this process)."""

    def __init__(self, engine: Engine) -> None:
        self.n = 0
        self.engine = engine

    def __enter__(self) -> _Statements:
        event.listen(self.engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._count)

    def _count(self, *args: object) -> None:
        self.n += 1


def test_a_page_costs_the_same_queries_whatever_its_size(service: Service, engine: Engine,
                                                        tmp_path: Path) -> None:
    def cost(path: str) -> int:
        service.get(path)  # warm: the first request checks the schema
        with _Statements(engine) as counted:
            assert service.get(path).status_code == 200
        return counted.n

    baseline = evaluated_run(engine, tmp_path, "b", _hits(40, 20))
    first = evaluated_run(engine, tmp_path, "r0", _hits(40, 21))
    with session_scope(engine) as session:
        set_baseline(session, baseline, JUDGE)
        gate_run(session, first, JUDGE, GatePolicy(min_items=10))
    _rebuild(engine)
    small_board, small_run = cost("/?dataset=arith"), cost(f"/runs/{first}")
    for i in range(1, 8):  # more runs on the board, every one gated
        run = evaluated_run(engine, tmp_path, f"r{i}", _hits(40, 20 + i))
        with session_scope(engine) as session:
            gate_run(session, run, JUDGE, GatePolicy(min_items=10))
    evaluate(engine, first, "mock")  # more evaluations and gate results on the run
    with session_scope(engine) as session:
        gate_run(session, first, JUDGE, GatePolicy(min_items=10, margin=0.2))
    _rebuild(engine)
    assert cost("/?dataset=arith") == small_board
    assert cost(f"/runs/{first}") == small_run
    assert small_board <= 8 and small_run <= 10


def test_a_long_series_is_read_in_buckets_keeping_spikes_breaks_and_summaries(
        engine: Engine) -> None:
    from tunix_rt.service.views_data import plot_series
    from tunix_rt.store.runs import register_run

    with session_scope(engine) as session:
        run = register_run(session, name="long", dataset="arith", model="m",
                           predictions_uri="file:///p.jsonl").id
        points = [("loss", s, 1.0 + s / 1000) for s in range(1000)]
        points[500] = ("loss", 500, 50.0)   # a spike
        points[700] = ("loss", 700, None)   # a NaN as reported: the line breaks
        points[999] = ("loss", 999, None)   # the last point is not finite
        points[300] = ("loss", 300, 0.25)   # the lowest
        session.execute(insert(RunMetric), [
            {"run_id": run, "name": n, "step": step, "value": v, "recorded_at": utcnow()}
            for n, step, v in points + [("lr", s, 0.1) for s in range(5)]])
    with session_scope(engine) as session:
        drawn, stats = plot_series(session, run, buckets=10)
    loss = drawn["loss"]
    assert len(loss) <= 2 * 11 + 2
    values = [v for _, v in loss if v is not None]
    assert max(values) == 50.0 and min(values) == 0.25
    breaks = [s for s, v in loss if v is None]
    assert len(breaks) == 2 and breaks[-1] == 999
    assert [s for s, _ in loss] == sorted(s for s, _ in loss)
    assert drawn["lr"] == [(s, 0.1) for s in range(5)]  # short: point by point
    s = stats["loss"]
    assert (s.n, s.n_finite, s.first_step, s.last_step) == (1000, 998, 0, 999)
    assert s.last == (998, 1.998) and s.lowest == (300, 0.25)
