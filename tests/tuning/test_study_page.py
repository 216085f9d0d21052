"""The studies' pages and API over a real uvicorn server, and the tune flow's trials artifact.

Studies are written through tunix_rt.tuning.studies (as the sweep's callback writes
them), so the page tests need no Ray; the last test runs a small real sweep.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest

from tests.http.conftest import SECRET, Service, serve_app
from tunix_rt.store.db import get_engine, session_scope
from tunix_rt.store.models import RunOrigin, StudyStatus, Trial
from tunix_rt.store.runs import register_run
from tunix_rt.tuning import studies
from tunix_rt.tuning.sweep import parse_sweep

# trial: (status, learning_rate, act, hidden_size, accuracy per iteration)
TRIALS = {
    "t0": ("completed", 1e-3, "relu", 16, [0.2, 0.4, 0.5, 0.55, 0.6]),
    "t1": ("stopped", 3e-2, "relu", 32, [0.1, 0.2]),
    "t2": ("failed", 1e-2, "tanh", 16, [0.5, 0.7, 0.9]),
    "t3": ("completed", 5e-4, "tanh", 32, [0.3, 0.5, 0.6, 0.7, 0.8]),
    "t4": ("running", 1e-4, "relu", 16, [0.05]),
}
SPACE = {"learning_rate": {"loguniform": [1e-4, 1e-1]}, "act": {"choice": ["relu", "tanh"]},
         "hidden_size": {"choice": [16, 32]}, "steps": 100}


def make_study(engine: Any, name: str = "lr-sweep", *, metric: str = "accuracy",
               mode: str = "max", trials: dict[str, tuple] = TRIALS,
               best: str | None = "t3") -> tuple[str, str | None]:
    """A study with its trials and results, the best trial registered as a run."""
    sweep = parse_sweep({"name": name, "dataset": "arithmetic", "metric": metric, "mode": mode,
                         "param_space": SPACE})
    with session_scope(engine) as session:
        study = studies.create_study(session, sweep, storage_path="unused")
        for trial_id, (status, lr, act, hidden, values) in trials.items():
            studies.upsert_trial(session, study.id, trial_id, status=status,
                                 config={"learning_rate": lr, "act": act, "hidden_size": hidden,
                                         "steps": 100},
                                 error="ValueError: <boom> & more" if status == "failed"
                                 else None)
            studies.record_results(session, study.id, [
                studies.ResultRow(trial_id, i, {metric: v, "note": "x"})
                for i, v in enumerate(values, start=1)])
        run_id = None
        if best is not None:
            run = register_run(session, name=f"{name}-{best}", dataset="arithmetic", model="m",
                               predictions_uri="/p.jsonl", origin=RunOrigin.tuning)
            run.study_id, run.trial_id = study.id, best
            trial = session.query(Trial).filter_by(study_id=study.id, trial_id=best).one()
            trial.run_id = run_id = run.id
        studies.finish_study(session, study.id, status=StudyStatus.completed,
                             best_trial_id=best)
        return study.id, run_id


@pytest.fixture
def service(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    monkeypatch.setenv("TUNIX_RT_WEBHOOK_SECRET", SECRET)
    from tunix_rt.service.server import create_app

    yield from serve_app(create_app())


# --- a small HTML reader (the pages are well-formed; no parser is installed) -------------

VOID = {"meta", "link", "br", "img", "input", "hr", "col", "area", "base", "wbr", "source"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.parts: list[str] = []

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.parts + [c.text for c in self.children]).split())

    def all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        found = []
        for child in self.children:
            if ((tag is None or child.tag == tag)
                    and (cls is None or cls in child.attrs.get("class", "").split())
                    and all(child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())):
                found.append(child)
            found.extend(child.all(tag, cls, **attrs))
        return found

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        found = self.all(tag, cls, **attrs)
        assert len(found) == 1, f"{len(found)} <{tag} class={cls} {attrs}>"
        return found[0]


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.node = Node("#root", {}, None)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.node)
        self.node.children.append(node)
        if tag not in VOID:
            self.node = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.node.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.node))

    def handle_endtag(self, tag: str) -> None:
        node = self.node
        while node.parent is not None and node.tag != tag:
            node = node.parent
        assert node.parent is not None, f"</{tag}> closes nothing"
        self.node = node.parent

    def handle_data(self, data: str) -> None:
        self.node.parts.append(data)


def page(service: Service, path: str, expect: int = 200, **params: Any) -> Node:
    response = service.get(path, **params)
    assert response.status_code == expect, response.text[:2000]
    assert response.headers["content-type"].startswith("text/html")
    reader = _Reader()
    reader.feed(response.text)
    return reader.root


# --- the API ------------------------------------------------------------------------------


def test_api_gives_the_trials_sorted_and_filtered_by_allowed_fields(service: Service,
                                                                    engine: Any) -> None:
    study_id, run_id = make_study(engine)

    def ids(**params: Any) -> list[str]:
        response = service.get(f"/api/studies/{study_id}", **params)
        assert response.status_code == 200, response.text
        return [t["trial_id"] for t in response.json()["trials"]]

    body = service.get(f"/api/studies/{study_id}").json()
    assert (body["n_trials"], body["best_trial_id"], body["best_value"], body["best_run_id"]) \
        == (5, "t3", 0.8, run_id)
    assert body["by_status"] == {"completed": 2, "stopped": 1, "failed": 1, "running": 1}
    assert body["param_space"] == SPACE and body["status"] == "completed"
    for trial in body["trials"]:
        status, lr, act, hidden, values = TRIALS[trial["trial_id"]]
        assert (trial["status"], trial["iterations"], trial["value"]) \
            == (status, len(values), values[-1])
        assert trial["config"]["learning_rate"] == lr and trial["config"]["act"] == act
        assert [(r["iteration"], r["metrics"]["accuracy"]) for r in trial["results"]] \
            == list(enumerate(values, start=1))
    [failed] = [t for t in body["trials"] if t["status"] == "failed"]
    assert failed["error"] == "ValueError: <boom> & more"

    # metric: best first under max (the failed trial's last value counts here: it is a sort);
    # status: completed, stopped, failed, running; iterations: most first.
    assert ids() == ["t2", "t3", "t0", "t1", "t4"]
    assert ids(sort="trial_id") == ["t0", "t1", "t2", "t3", "t4"]
    assert ids(sort="status") == ["t3", "t0", "t1", "t2", "t4"]
    assert ids(sort="iterations") == ["t3", "t0", "t2", "t1", "t4"]
    assert ids(status="stopped") == ["t1"] and ids(status="pending") == []
    assert service.get(f"/api/studies/{study_id}", results="false").json()["trials"][0][
        "results"] is None
    # By name: the latest study of that name.
    assert service.get("/api/studies/lr-sweep").json()["id"] == study_id


def test_api_refuses_what_is_not_on_the_allow_list(service: Service, engine: Any) -> None:
    study_id, _ = make_study(engine)
    bad_sort = service.get(f"/api/studies/{study_id}", sort="config")
    assert bad_sort.status_code == 422 and "sort" in bad_sort.text
    bad_status = service.get(f"/api/studies/{study_id}", status="errored")
    assert bad_status.status_code == 422 and "status" in bad_status.text
    missing = service.get("/api/studies/no-such-study")
    assert missing.status_code == 404
    assert missing.json()["error"] == "no study with id or name 'no-such-study'"
    cursor = service.get("/api/studies", cursor="not-a-cursor")
    assert cursor.status_code == 400 and cursor.json()["parameter"] == "cursor"
    assert service.get("/api/studies", limit=0).status_code == 422
    assert service.get("/api/studies", status="stopped").status_code == 422

    schema = service.get("/openapi.json").json()
    detail = schema["paths"]["/api/studies/{study_id}"]["get"]
    declared = {p["name"]: p["schema"] for p in detail["parameters"]}
    assert declared["sort"]["enum"] == ["metric", "trial_id", "status", "iterations"]
    status = declared["status"]  # an optional enum: plain, or anyOf the enum and null
    enum = status.get("enum") or next(s["enum"] for s in status["anyOf"] if "enum" in s)
    assert set(enum) == {"pending", "running", "completed", "stopped", "failed"}
    assert {"200", "400", "404", "422"} <= set(detail["responses"])
    assert detail["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] \
        .endswith("/StudyDetailModel")
    listing = schema["paths"]["/api/studies"]["get"]
    assert {"200", "400", "422"} <= set(listing["responses"])


def test_api_pages_through_every_study_once(service: Service, engine: Any) -> None:
    made = [make_study(engine, f"s{i}", metric="loss", mode="min",
                       trials={"a": ("completed", 1e-3, "relu", 16, [0.9, 0.4]),
                               "b": ("completed", 1e-2, "relu", 32, [0.8, 0.3])},
                       best=None)[0] for i in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = service.get("/api/studies", **params).json()
        seen += [s["id"] for s in body["studies"]]
        for study in body["studies"]:
            # No best named (the study was cut short): the best finished trial, lowest loss.
            assert (study["best_trial_id"], study["best_value"]) == ("b", 0.3)
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == made[::-1]  # newest first, each once
    only = service.get("/api/studies", dataset="arithmetic", status="completed").json()
    assert len(only["studies"]) == 5
    assert service.get("/api/studies", dataset="other").json()["studies"] == []


# --- the pages ----------------------------------------------------------------------------


def test_study_page_shows_trials_curves_hyperparameters_and_the_best_run(
        service: Service, engine: Any) -> None:
    study_id, run_id = make_study(engine)
    root = page(service, f"/studies/{study_id}")

    rows = root.one("table", id="trials").one("tbody").all("tr")
    assert [r.attrs["data-trial-id"] for r in rows] == ["t2", "t3", "t0", "t1", "t4"]
    assert {r.attrs["data-trial-id"]: r.attrs["data-status"] for r in rows} == {
        t: v[0] for t, v in TRIALS.items()}
    by_id = {r.attrs["data-trial-id"]: r for r in rows}
    assert "stopped early" in by_id["t1"].text
    assert "ValueError: <boom> & more" in by_id["t2"].text  # escaped, shown as text
    assert "learning_rate=0.0005" in by_id["t3"].text and "best" in by_id["t3"].text
    assert root.one("a", cls="best-run").attrs["href"] == f"/runs/{run_id}"
    assert root.one("a", cls="best-gate").attrs["href"] == f"/runs/{run_id}/gate"

    plots = root.all("svg", cls="plot")
    curves = root.one("section", id="curves").one("svg", cls="plot")
    names = [s.attrs["data-name"] for s in curves.all(cls="series")]
    assert names[0] == "t3 (best)" and sorted(names[1:]) == ["t0", "t1", "t2", "t4"]
    figures = {f.attrs["data-name"]: f for f in root.all("figure", cls="hyperparameter")}
    assert set(figures) == {"act", "hidden_size", "learning_rate"}  # steps is a constant
    assert len(plots) == 3  # the curves, and a scatter per numeric hyperparameter
    lr = figures["learning_rate"].one("svg", cls="plot")
    assert "learning_rate (log scale)" in lr.text
    # Completed and stopped trials only: the failed and the running one say nothing of
    # what their config is worth.
    assert sorted(int(c.attrs["data-index"]) for c in lr.all(cls="point")) == [0, 1, 2]
    assert lr.one(cls="highlight").one("title").text == "t3"
    assert "log scale" not in figures["hidden_size"].text
    act = {r.all("td")[0].text: [c.text for c in r.all("td")[1:]]
           for r in figures["act"].one("table", cls="categorical").one("tbody").all("tr")}
    # relu: t0 0.6 and t1 0.2; tanh: t3 0.8 (t2 failed); sorted best mean first.
    assert act == {"tanh": ["1", "0.8000", "0.8000"], "relu": ["2", "0.4000", "0.6000"]}
    assert list(act) == ["tanh", "relu"]

    failed = page(service, f"/studies/{study_id}", status="failed", sort="trial_id")
    assert [r.attrs["data-trial-id"] for r in
            failed.one("table", id="trials").one("tbody").all("tr")] == ["t2"]


def test_studies_list_and_a_missing_study(service: Service, engine: Any) -> None:
    first, _ = make_study(engine, "first")
    second, _ = make_study(engine, "second", best=None,
                           trials={"x": ("failed", 1e-3, "relu", 16, [0.1])})
    root = page(service, "/studies")
    rows = root.one("table", id="studies").one("tbody").all("tr")
    assert [r.attrs["data-study-id"] for r in rows] == [second, first]
    links = [r.one("a", cls="study") for r in rows]
    assert [(a.attrs["href"], a.text) for a in links] == [(f"/studies/{second}", "second"),
                                                          (f"/studies/{first}", "first")]
    cells = [c.text for c in rows[1].all("td")]
    assert cells[4:9] == ["5", "2", "1", "1", "0.8000"]  # trials, completed, stopped, failed, best
    assert [c.text for c in rows[0].all("td")][4:9] == ["1", "0", "0", "1", "–"]

    missing = page(service, "/studies/nope", expect=404)
    assert "no study with id or name 'nope'" in missing.one("p", id="problem").text
    assert missing.one("nav", aria_label="Where to go").one("a", href="/studies")
    bad = page(service, "/studies", expect=400, cursor="not-ours")
    assert "invalid cursor 'not-ours'" in bad.one("p", id="problem").text
    assert page(service, "/studies", dataset="other").one("p", id="no-studies")


# --- the Prefect artifact of a real sweep -------------------------------------------------


@pytest.mark.flows
@pytest.mark.tuning
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_sweep_leaves_a_table_artifact_of_its_trials(db_url: str, prefect_api_url: str,
                                                       ray_cluster: dict,
                                                       tune_storage: str) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tunix_rt.flows.tuning import tune_flow

    sweep = parse_sweep({"name": "Artifact_Sweep", "trainable": "builtin",
                         "dataset": "arithmetic", "num_samples": 1, "max_concurrent_trials": 2,
                         "scheduler": {"type": "none"}, "resources": {"cpu": 1},
                         "param_space": {"learning_rate": {"grid": [0.1, 0.0003]},
                                         "hidden_size": 16, "steps": 20, "seed": 0}})
    state = tune_flow(sweep=sweep, return_state=True)
    result = state.result()
    flow_run_id = state.state_details.flow_run_id

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["trials-artifact-sweep"])))
    [mine] = [a for a in artifacts if a.flow_run_id == flow_run_id]
    assert mine.type == "table" and result["study_id"] in mine.description
    rows = json.loads(mine.data) if isinstance(mine.data, str) else mine.data
    with session_scope(get_engine(db_url)) as session:
        study = studies.get_study(session, result["study_id"])
        stored = {t.trial_id: t for t in studies.study_trials(session, study)}
    assert {r["trial"] for r in rows} == set(stored) and len(rows) == 2
    for row in rows:
        trial = stored[row["trial"]]
        assert (row["status"], row["iterations"], row["learning_rate"]) == (
            trial.status, trial.iterations, trial.config["learning_rate"])
        assert row["accuracy"] == pytest.approx(trial.value)
        assert row["best"] == (row["trial"] == result["best_trial_id"])
    [best] = [r for r in rows if r["best"]]
    assert best["run_id"] == result["runs"][0]["run_id"]
    assert rows[0]["best"]  # best first


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_large_study_draws_the_best_and_names_the_curves_left_out(service: Service,
                                                                    engine: Any) -> None:
    from tunix_rt.service.study_page import MAX_CURVES

    many = {f"t{i:03d}": ("completed", 1e-3, "relu", 16, [i / 100, i / 50])
            for i in range(MAX_CURVES + 2)}
    study_id, _ = make_study(engine, "wide", trials=many, best="t000")  # the worst, named best
    root = page(service, f"/studies/{study_id}")
    curves = root.one("section", id="curves")
    names = [s.attrs["data-name"] for s in curves.one("svg", cls="plot").all(cls="series")]
    assert len(names) == MAX_CURVES and names[0] == "t000 (best)"
    assert "2 more trials not drawn" in curves.one("figcaption").text
    assert len(root.one("table", id="trials").one("tbody").all("tr")) == MAX_CURVES + 2
