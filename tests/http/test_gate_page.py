"""The gate's evidence over real HTTP: ``/runs/{id}/gate`` and ``/api/runs/{id}/compare``.

The runs are the demo's (tunix_rt.cli.demo): the baseline ``grpo-step-800`` and the
regressed ``grpo-lr-3e-5``, scored by exact_match, gated as the loop gates them. The
page must show why the regressed run failed: FAIL, its interval below the margin, and
the items the baseline got right and it got wrong, with both answers.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import Engine

from tests.db.support import evaluate
from tests.http.conftest import Service
from tunix_rt.cli.demo import RUNS, make_eval_set, simulate_predictions
from tunix_rt.quality.gating import gate_run, set_baseline
from tunix_rt.quality.stats import GatePolicy
from tunix_rt.store.db import session_scope
from tunix_rt.store.runs import register_run

JUDGE = "exact_match"
N_ITEMS = 120
HOSTILE_ITEM = "arith-0003"
HOSTILE_RESPONSE = '</pre><script>alert("pwned")</script><img src=x onerror=alert(1)>'
HOSTILE_PROMPT = 'What is <b>2+2</b>? "</p><script>alert(2)</script>'
CANDIDATE_NAME = "grpo-lr-3e-5 <i>regressed</i>"


# --------------------------------------------------------------------------
# a small HTML tree (stdlib only) to read the page by ids and classes
# --------------------------------------------------------------------------

VOID = {"meta", "link", "br", "hr", "img", "input", "col", "area", "base", "wbr", "source"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def walk(self):  # noqa: ANN201
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.walk()

    def find(self, tag: str = "", id: str = "", cls: str = "") -> list[Node]:  # noqa: A002
        return [n for n in self.walk() if (not tag or n.tag == tag)
                and (not id or n.attrs.get("id") == id) and (not cls or cls in n.classes)]

    def one(self, tag: str = "", id: str = "", cls: str = "") -> Node:  # noqa: A002
        found = self.find(tag, id, cls)
        assert len(found) == 1, (tag, id, cls, len(found))
        return found[0]


class Tree(HTMLParser):
    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.current = Node("#root", {}, None)
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_endtag(self, tag: str) -> None:
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse(page: str) -> Node:
    return Tree(page).root


# --------------------------------------------------------------------------
# the demo's runs
# --------------------------------------------------------------------------


def _answer_right(response: str, reference: str) -> bool:
    """What exact_match decides on the demo's responses: the last number is the answer."""
    numbers = re.findall(r"-?\d[\d,]*", response)
    return bool(numbers) and numbers[-1].replace(",", "") == reference


def _demo_predictions(tmp_path: Path) -> dict[str, list[dict[str, Any]]]:
    items = make_eval_set(N_ITEMS)
    baseline = simulate_predictions(RUNS[1], items, seed=101)
    candidate = simulate_predictions(RUNS[2], items, seed=102)
    for rows in (baseline, candidate):
        rows[3]["prompt"] = HOSTILE_PROMPT
    assert _answer_right(baseline[3]["response"], baseline[3]["reference"])
    candidate[3]["response"] = HOSTILE_RESPONSE  # no answer in it: a wrong answer
    return {"baseline": baseline, "candidate": candidate}


def _write(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def demo(engine: Engine, tmp_path: Path) -> dict[str, Any]:
    """The baseline and the regressed run, evaluated and gated; what to expect of them."""
    rows = _demo_predictions(tmp_path)
    ids = {}
    for side, name in (("baseline", RUNS[1].name), ("candidate", CANDIDATE_NAME)):
        with session_scope(engine) as session:
            ids[side] = register_run(session, name=name, dataset="demo-arithmetic",
                                     model="gemma", predictions_uri=_write(
                                         tmp_path / f"{side}.jsonl", rows[side])).id
        evaluate(engine, ids[side], JUDGE)
        if side == "baseline":
            with session_scope(engine) as session:
                set_baseline(session, ids[side], JUDGE)
    with session_scope(engine) as session:
        report = gate_run(session, ids["candidate"], JUDGE, GatePolicy())
    assert report.decision == "fail"
    right = {side: {r["id"] for r in rows[side] if _answer_right(r["response"], r["reference"])}
             for side in rows}
    return {**ids, "report": report, "rows": rows,
            "regressions": right["baseline"] - right["candidate"],
            "improvements": right["candidate"] - right["baseline"]}


def _page(service: Service, run_id: str, **params: Any) -> Node:
    response = service.get(f"/runs/{run_id}/gate", **params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    return parse(response.text)


def _listed(service: Service, run_id: str, outcome: str) -> list[Node]:
    """Every item row of the page's list under ``outcome``, following a.next-page."""
    rows, params = [], {"outcome": outcome}
    while True:
        page = _page(service, run_id, **params)
        rows += page.find("tr", cls="item")
        following = page.find("a", cls="next-page")
        if not following:
            return rows
        params = {k: v[0] for k, v in parse_qs(urlsplit(following[0].attrs["href"]).query)
                  .items()}


def test_the_failing_run_shows_why(service: Service, demo: dict[str, Any]) -> None:
    page = _page(service, demo["candidate"])
    report = demo["report"]

    badge = page.one(cls="decision", tag="span")
    assert "fail" in badge.classes and "badge" in badge.classes and badge.text() == "FAIL"
    assert "lies below -0.01" in page.one("p", cls="reason").text()
    # The interval, drawn against the margin: the bar spans the CI, a mark sits at -margin.
    svg = page.one("svg", cls="interval")
    assert "plot" in svg.classes and svg.attrs["role"] == "img"
    ci = svg.one("rect", cls="ci")
    assert float(ci.attrs["data-low"]) == pytest.approx(report.ci_low, abs=1e-4)
    assert float(ci.attrs["data-high"]) == pytest.approx(report.ci_high, abs=1e-4)
    assert {float(m.attrs["data-value"]) for m in svg.find("line", cls="mark")} == {-0.01, 0.0}
    assert float(svg.attrs["data-lo"]) <= report.ci_low < report.ci_high < -0.01 \
        < float(svg.attrs["data-hi"])
    assert page.one(cls="n-paired").text() == str(N_ITEMS)
    assert page.one("dd", cls="ci").text() == f"[{report.ci_low:+.4f}, {report.ci_high:+.4f}]"
    assert page.one("a", cls="baseline").attrs["href"] == f"/runs/{demo['baseline']}"
    assert "margin" in page.one("details", id="policy").text()

    # The 2x2 table: its cells add up, and the regressions' cell links to exactly them.
    table = page.one("table", id="contingency")
    counts = {c: int(table.one("td", cls=c).text().replace(",", ""))
              for c in ("both_right", "only_candidate", "only_baseline", "both_wrong")}
    assert sum(counts.values()) == N_ITEMS
    assert counts["only_baseline"] == len(demo["regressions"]) > 25  # more than one page
    href = table.one("td", cls="only_baseline").one("a").attrs["href"]
    assert parse_qs(urlsplit(href).query)["outcome"] == ["only_baseline"]

    rows = _listed(service, demo["candidate"], "only_baseline")
    assert [r.one(cls="item-id").text() for r in rows] == sorted(demo["regressions"])
    by_id = {r["id"]: r for r in demo["rows"]["baseline"]}
    cand_by_id = {r["id"]: r for r in demo["rows"]["candidate"]}
    for row in rows:
        item_id = row.one(cls="item-id").text()
        cand, base = row.one("td", cls="candidate"), row.one("td", cls="baseline")
        assert row.one(cls="prompt").text().strip() == by_id[item_id]["prompt"]
        assert row.one(cls="reference").text().split()[-1] == by_id[item_id]["reference"]
        assert cand.one("pre", cls="response").text() == cand_by_id[item_id]["response"]
        assert base.one("pre", cls="response").text() == by_id[item_id]["response"]
        assert cand.one(cls="verdict").text() == "wrong" and base.one(cls="verdict").text() \
            == "right"
        assert "!=" in cand.one(cls="rationale").text()
        assert "==" in base.one(cls="rationale").text()


def test_hostile_text_is_escaped(service: Service, demo: dict[str, Any]) -> None:
    response = service.get(f"/runs/{demo['candidate']}/gate", outcome="only_baseline")
    assert response.status_code == 200
    for hostile in ("<script>", "<img src=x", "<b>2+2", "<i>regressed"):
        assert hostile not in response.text
    page = parse(response.text)
    row = [r for r in page.find("tr", cls="item") if r.one(cls="item-id").text() == HOSTILE_ITEM]
    assert len(row) == 1
    assert row[0].one("td", cls="candidate").one("pre").text() == HOSTILE_RESPONSE
    assert row[0].one(cls="prompt").text().strip() == HOSTILE_PROMPT
    assert CANDIDATE_NAME in page.one("h1").text()


def test_compare_api_pages_and_refuses_bad_input(service: Service, demo: dict[str, Any]
                                                 ) -> None:
    url = f"/api/runs/{demo['candidate']}/compare"
    first = service.get(url, limit=10)
    assert first.status_code == 200
    body = first.json()
    assert body["baseline_run_id"] == demo["baseline"] and body["baseline_from"] == "gate"
    assert body["outcome"] == "disagree" and body["counts"]["only_baseline"] == len(
        demo["regressions"])
    seen, cursor = [], None
    while True:
        page = service.get(url, limit=50, **({"cursor": cursor} if cursor else {})).json()
        seen += [i["item_id"] for i in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert len(seen) == len(set(seen))
    assert set(seen) == demo["regressions"] | demo["improvements"]

    for params, status, named in (({"cursor": "bm90IGEgY3Vyc29y"}, 400, "cursor"),
                                  ({"outcome": "worse"}, 422, "outcome"),
                                  ({"limit": 0}, 422, "limit"),
                                  ({"judge": "format"}, 404, "no completed evaluation"),
                                  ({"baseline": "no-such-run"}, 404, "no-such-run")):
        answer = service.get(url, **params)
        assert answer.status_code == status, (params, answer.text)
        assert named in answer.json()["error"]
    assert service.get("/api/runs/no-such-run/compare").status_code == 404
    missing = service.get("/runs/no-such-run/gate")
    assert missing.status_code == 404
    assert "no-such-run" in parse(missing.text).one("p", id="problem").text()
    foreign = service.get(f"/runs/{demo['candidate']}/gate", cursor="bm90IGEgY3Vyc29y")
    assert foreign.status_code == 400 and foreign.headers["content-type"].startswith("text/html")
    assert "invalid cursor" in parse(foreign.text).one("p", id="problem").text()
    # The baseline itself has no gate of its own yet: the page says so.
    page = _page(service, demo["baseline"])
    assert "has no gate result" in page.one("p", cls="message").text()


@pytest.mark.flows
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_gate_artifact_links_to_the_page(service: Service, engine: Engine, tmp_path: Path,
                                             prefect_api_url: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's gate artifact, read back from the Prefect server, links to the page."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tunix_rt.flows.quality_loop import quality_loop

    monkeypatch.setenv("TUNIX_RT_PUBLIC_URL", "https://tunix.example.org/")
    rows = _demo_predictions(tmp_path)
    flow_runs = {}
    for side in ("baseline", "candidate"):
        with session_scope(engine) as session:
            run_id = register_run(session, name=side, dataset="Gate Links", model="gemma",
                                  predictions_uri=_write(tmp_path / f"{side}.jsonl",
                                                         rows[side])).id
        state = quality_loop(run_id, judges=[JUDGE], policy=GatePolicy(auto_promote=True),
                             return_state=True)
        assert state.is_completed()
        flow_runs[side] = (run_id, state.state_details.flow_run_id)

    run_id, flow_run_id = flow_runs["candidate"]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["gate-gate-links-exact-match"])))
    (mine,) = [a for a in artifacts if a.flow_run_id == flow_run_id]
    links = re.findall(r"\]\((https://tunix\.example\.org/[^)]+)\)", str(mine.data))
    assert links == [f"https://tunix.example.org/runs/{run_id}/gate?judge=exact_match"]
    assert "**fail**" in str(mine.data)
    # The link leads to the page of that run's failed gate.
    target = urlsplit(links[0])
    response = service.get(target.path, **{k: v[0] for k, v in parse_qs(target.query).items()})
    assert response.status_code == 200
    assert parse(response.text).one("span", cls="decision").text() == "FAIL"
    # The first run had nothing to be compared with, and became the baseline: said so.
    first = _page(service, flow_runs["baseline"][0])
    assert first.one("span", cls="decision").text() == "NO BASELINE"
    assert "then became the baseline" in first.one("p", cls="message").text()
    assert not first.find("table", id="contingency")


def test_without_a_public_url_the_artifact_says_how_to_link() -> None:
    from tunix_rt.quality.gating import GateReport
    from tunix_rt.tasks.quality import gate_markdown

    report = GateReport("r1", "d", JUDGE, "fail", -0.2, -0.3, -0.1, 50, "r0", "why", {},
                        "2026-11-30T00:00:00+00:00")
    text = gate_markdown(report, None, None)
    assert "TUNIX_RT_PUBLIC_URL" in text and "/runs/r1/gate" in text and "](" not in text


@pytest.mark.parametrize("value", ["ftp://tunix.example.org", "tunix.example.org",
                                   "https://", "https://x.org/?a=1", "http://x.org/a b"])
def test_a_public_url_that_is_not_http_is_refused(value: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tunix_rt.errors import InvalidInputError
    from tunix_rt.settings import get_settings

    monkeypatch.setenv("TUNIX_RT_PUBLIC_URL", value)
    with pytest.raises(InvalidInputError, match="TUNIX_RT_PUBLIC_URL"):
        get_settings()
    monkeypatch.setenv("TUNIX_RT_PUBLIC_URL", "https://tunix.example.org/base/")
    assert get_settings().public_url == "https://tunix.example.org/base"
