"""Unit tests for tunix_rt.service.plots: the SVG is parsed, not compared as a string."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest
from markupsafe import Markup

from tunix_rt.service import plots

NS = "{http://www.w3.org/2000/svg}"


def parse(svg: Markup) -> ET.Element:
    assert isinstance(svg, Markup)
    root = ET.fromstring(str(svg))
    assert root.tag == f"{NS}svg"
    assert root.get("role") == "img"
    return root


def by_class(root: ET.Element, cls: str) -> list[ET.Element]:
    return [e for e in root.iter() if cls in (e.get("class") or "").split()]


def texts(root: ET.Element) -> list[str]:
    return [e.text or "" for e in root.iter(f"{NS}text")]


def accessible_name(root: ET.Element) -> str:
    """What a screen reader announces: aria-label, or the elements aria-labelledby names."""
    if root.get("aria-label"):
        return root.get("aria-label") or ""
    ids = (root.get("aria-labelledby") or "").split()
    assert ids, "an SVG without an accessible name"
    found = {e.get("id"): (e.text or "") for e in root.iter() if e.get("id")}
    return " ".join(found[i] for i in ids)


def polyline_points(element: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, pair.split(","))) for pair in element.get("points", "").split()]


def tick_values(root: ET.Element, axis: str) -> list[str]:
    (group,) = by_class(root, f"{axis}-axis")
    return [t.find(f"{NS}text").text for t in by_class(group, "tick")]


# --------------------------------------------------------------------------
# line_chart
# --------------------------------------------------------------------------


def test_line_chart_draws_each_series_with_axes_labels_and_a_legend() -> None:
    svg = plots.line_chart({"loss": [(0, 2.0), (10, 1.0), (20, 0.5)],
                            "eval_loss": [(0, 2.2), (20, 0.9)]},
                           title="Loss over steps", x_label="step", y_label="loss")
    root = parse(svg)
    assert "Loss over steps" in accessible_name(root)
    assert "loss: 3 points" in accessible_name(root)  # the <desc> summary
    assert "plot" in root.get("class").split()
    series = by_class(root, "series")
    assert [s.get("data-name") for s in series] == ["loss", "eval_loss"]
    loss_line = by_class(series[0], "line")[0]
    pts = polyline_points(loss_line)
    assert len(pts) == 3
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    assert xs == sorted(xs) and ys == sorted(ys)  # x grows; loss falls, so SVG y grows
    colours = {by_class(s, "line")[0].get("stroke") for s in series}
    assert len(colours) == 2
    assert [t for t in texts(by_class(root, "legend")[0])] == ["loss", "eval_loss"]
    labels = [e.text for e in by_class(root, "axis-label")]
    assert labels == ["step", "loss"]
    xs = [float(v) for v in tick_values(root, "x")]
    assert xs[0] == 0 and xs[-1] == 20 and all(v == int(v) for v in xs)


def test_ticks_are_round_numbers_that_cover_the_data() -> None:
    root = parse(plots.line_chart({"acc": [(1, 0.413), (2, 0.447), (3, 0.432)]},
                                  title="t", x_label="step", y_label="accuracy"))
    ys = [float(v) for v in tick_values(root, "y")]
    assert ys[0] <= 0.413 and ys[-1] >= 0.447
    step = ys[1] - ys[0]
    assert all(math.isclose(b - a, step, rel_tol=1e-6) for a, b in zip(ys, ys[1:]))
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 2.5, 5))
    assert 3 <= len(ys) <= 12


def test_a_single_series_has_no_legend() -> None:
    root = parse(plots.line_chart({"loss": [(0, 1.0), (1, 0.5)]}, title="t", x_label="x",
                                  y_label="y"))
    assert by_class(root, "legend") == []


def test_none_breaks_a_line_and_non_finite_values_are_skipped() -> None:
    root = parse(plots.line_chart(
        {"loss": [(0, 3.0), (1, 2.0), (2, None), (3, 1.5), (4, 1.0), (5, float("nan")),
                  (6, float("inf")), (7, 0.8), (8, None), (9, 0.5)]},
        title="t", x_label="step", y_label="loss"))
    lines = by_class(root, "line")
    assert [len(polyline_points(l)) for l in lines] == [2, 3]  # 0-1 | 3,4,7 | 9 alone
    (alone,) = by_class(root, "point")
    assert float(alone.get("cx")) > max(p[0] for p in polyline_points(lines[1]))
    assert "nan" not in str(plots.line_chart({"a": [(0, float("nan")), (1, 1.0)]},
                                             title="t", x_label="x", y_label="y")).lower()


def test_hlines_are_drawn_labelled_and_inside_the_range() -> None:
    root = parse(plots.line_chart({"score": [(0, 0.5), (1, 0.6)]}, title="t", x_label="x",
                                  y_label="y", hlines=[(0.9, "baseline 0.90")]))
    (hline,) = by_class(root, "hline")
    assert hline.get("data-value") == "0.9"
    assert texts(hline) == ["baseline 0.90"]
    ys = [float(v) for v in tick_values(root, "y")]
    assert ys[-1] >= 0.9
    (line,) = hline.findall(f"{NS}line")
    (top_tick,) = [t for t in by_class(by_class(root, "y-axis")[0], "tick")
                   if float(t.find(f"{NS}text").text) == ys[-1]]
    assert float(line.get("y1")) >= float(top_tick.find(f"{NS}line").get("y1"))


@pytest.mark.parametrize("series", [{}, {"loss": []}, {"loss": [(0, None), (1, float("nan"))]}])
def test_empty_line_chart_says_so(series: dict) -> None:
    root = parse(plots.line_chart(series, title="Loss", x_label="step", y_label="loss"))
    assert texts(root) == ["no data"]
    assert "no data" in accessible_name(root)


def test_one_point_and_all_equal_values_get_a_usable_range() -> None:
    root = parse(plots.line_chart({"loss": [(5, 0.7)]}, title="t", x_label="x", y_label="y"))
    (point,) = by_class(root, "point")
    ys = [float(v) for v in tick_values(root, "y")]
    assert ys[0] < 0.7 < ys[-1]
    xs = [float(v) for v in tick_values(root, "x")]
    assert xs[0] < 5 < xs[-1]
    root = parse(plots.line_chart({"loss": [(0, 0.0), (1, 0.0), (2, 0.0)]}, title="t",
                                  x_label="x", y_label="y"))
    (line,) = by_class(root, "line")
    assert len({p[1] for p in polyline_points(line)}) == 1
    assert all(math.isfinite(c) for p in polyline_points(line) for c in p)


def test_huge_ranges_keep_finite_coordinates_and_short_labels() -> None:
    root = parse(plots.line_chart({"x": [(0, -1e308), (1, 1e308), (2, 1e-300)]}, title="t",
                                  x_label="x", y_label="y"))
    for line in by_class(root, "line"):
        assert all(math.isfinite(c) for p in polyline_points(line) for c in p)
    assert all(len(v) <= 10 for v in tick_values(root, "y"))
    root = parse(plots.line_chart({"x": [(0, 1.0), (1e9, 2.0)]}, title="t", x_label="step",
                                  y_label="y"))
    assert all(len(v) <= 10 for v in tick_values(root, "x"))


def test_a_long_series_is_thinned_to_the_pixels_but_keeps_its_spikes() -> None:
    points = [(i, 1.0) for i in range(100_000)]
    points[54_321] = (54_321, 9.0)
    root = parse(plots.line_chart({"loss": points}, title="t", x_label="step", y_label="loss",
                                  width=400))
    (line,) = by_class(root, "line")
    pts = polyline_points(line)
    assert len(pts) < 4 * 400
    top = min(p[1] for p in pts)  # SVG y is downwards: the spike is the smallest y
    ys = [float(v) for v in tick_values(root, "y")]
    assert ys[-1] >= 9.0
    assert sum(1 for p in pts if p[1] == top) == 1


def test_labels_are_escaped() -> None:
    hostile = '<script>alert("x")</script>'
    svg = plots.line_chart({hostile: [(0, 1.0), (1, 2.0)], "b": [(0, 1.0)]}, title=hostile,
                           x_label=hostile, y_label="y", hlines=[(1.5, hostile)])
    assert "<script>" not in str(svg)
    root = parse(svg)
    assert hostile in texts(root)
    assert by_class(root, "series")[0].get("data-name") == hostile
    for fn in (lambda: plots.scatter([(1, 1)], title=hostile, x_label=hostile, y_label="y",
                                     labels=[hostile], highlight=[0]),
               lambda: plots.interval(0.5, 0.4, 0.6, lo=0, hi=1, title=hostile,
                                      marks=[(0.5, hostile)])):
        svg = fn()
        assert "<script>" not in str(svg)
        assert hostile in accessible_name(parse(svg))


def test_every_chart_on_a_page_has_its_own_ids() -> None:
    a = parse(plots.line_chart({"a": [(0, 1)]}, title="a", x_label="x", y_label="y"))
    b = parse(plots.line_chart({"a": [(0, 1)]}, title="a", x_label="x", y_label="y"))
    assert a.get("aria-labelledby") != b.get("aria-labelledby")


# --------------------------------------------------------------------------
# scatter
# --------------------------------------------------------------------------


def test_scatter_places_points_and_names_the_highlighted_one() -> None:
    points = [(1e-5, 0.5), (1e-4, 0.7), (1e-3, 0.6), (0.0, 0.9), (float("nan"), 0.1)]
    root = parse(plots.scatter(points, title="Score by learning rate", x_label="lr",
                               y_label="score", log_x=True, highlight=[1],
                               labels=["t0", "t1", "t2", "t3", "t4"]))
    circles = by_class(root, "point")
    assert sorted(int(c.get("data-index")) for c in circles) == [0, 1, 2]  # x≤0, NaN skipped
    (best,) = by_class(root, "highlight")
    assert best.get("data-index") == "1"
    assert best.find(f"{NS}title").text == "t1"
    assert [e.text for e in by_class(root, "point-label")] == ["t1"]
    cx = {int(c.get("data-index")): float(c.get("cx")) for c in circles}
    assert math.isclose(cx[1] - cx[0], cx[2] - cx[1], rel_tol=1e-2)  # decades evenly apart
    assert "lr (log scale)" in texts(root)
    assert "highlighted: t1" in accessible_name(root)
    xs = [float(v) for v in tick_values(root, "x")]
    mantissas = {round(v / 10 ** math.floor(math.log10(v) + 1e-9), 6) for v in xs}
    assert mantissas <= {1.0, 2.0, 5.0} and xs[0] <= 1e-5 and xs[-1] >= 1e-3


def test_scatter_linear_axis_and_empty() -> None:
    root = parse(plots.scatter([(0, 0), (10, 1)], title="t", x_label="a", y_label="b"))
    c = sorted(by_class(root, "point"), key=lambda e: int(e.get("data-index")))
    assert float(c[0].get("cx")) < float(c[1].get("cx"))
    assert float(c[0].get("cy")) > float(c[1].get("cy"))
    root = parse(plots.scatter([], title="t", x_label="a", y_label="b"))
    assert texts(root) == ["no data"]


# --------------------------------------------------------------------------
# interval
# --------------------------------------------------------------------------


def test_interval_bars_share_a_scale() -> None:
    a = parse(plots.interval(0.5, 0.4, 0.6, lo=0, hi=1, title="a"))
    b = parse(plots.interval(0.8, 0.7, 0.9, lo=0, hi=1, title="b",
                             marks=[(0.5, "baseline 0.50")]))
    (ra,), (rb,) = by_class(a, "ci"), by_class(b, "ci")
    assert math.isclose(float(ra.get("width")), float(rb.get("width")), abs_tol=0.2)
    assert float(rb.get("x")) > float(ra.get("x"))
    (va,) = by_class(a, "value")
    (mark,) = by_class(b, "mark")
    assert math.isclose(float(mark.get("x1")), float(va.get("cx")), abs_tol=0.2)
    assert mark.find(f"{NS}title").text == "baseline 0.50"
    assert accessible_name(b) == "b"


def test_interval_clips_to_its_scale_and_survives_odd_input() -> None:
    root = parse(plots.interval(1.5, 0.9, 2.0, lo=0, hi=1, title="t"))
    (value,) = by_class(root, "value")
    assert "clipped" in value.get("class")
    assert float(value.get("cx")) <= 220
    (rect,) = by_class(root, "ci")
    assert float(rect.get("x")) + float(rect.get("width")) <= 220
    root = parse(plots.interval(float("nan"), float("nan"), 1.0, lo=0.5, hi=0.5, title="t"))
    assert by_class(root, "value") == [] and by_class(root, "ci") == []


def test_shared_scale() -> None:
    assert plots.shared_scale([0.2, 0.9, None]) == (0.0, 1.0)
    assert plots.shared_scale([]) == (0.0, 1.0)
    lo, hi = plots.shared_scale([0.2, 3.7, float("nan")])
    assert lo <= 0.2 and hi >= 3.7 and hi <= 5
    lo, hi = plots.shared_scale([-0.3, 0.4], include=[0.0])
    assert lo <= -0.3 and hi >= 0.4


def test_the_last_x_label_fits_in_the_chart() -> None:
    root = parse(plots.line_chart({"loss": [(0, 1.0), (1_500, 0.5)]}, title="t", x_label="step",
                                  y_label="loss", width=400))
    (axis,) = by_class(root, "x-axis")
    last = by_class(axis, "tick")[-1].find(f"{NS}text")
    assert last.text == "1,500"
    assert float(last.get("x")) + len(last.text) * plots.CHAR_W / 2 <= 400


def test_scale_axis_matches_the_interval_bars() -> None:
    ruler = parse(plots.scale_axis(0.0, 1.0, title="scale"))
    bar = parse(plots.interval(0.5, 0.4, 0.6, lo=0.0, hi=1.0, title="b"))
    ticks = {t.find(f"{NS}text").text: float(t.find(f"{NS}line").get("x1"))
             for t in by_class(ruler, "tick")}
    assert list(ticks) == ["0", "0.25", "0.50", "0.75", "1.00"]
    assert ticks["0"] == 4 and ticks["1.00"] == 216  # the bars' padding, both ends
    (value,) = by_class(bar, "value")
    (half,) = [x for label, x in ticks.items() if float(label) == 0.5]
    assert math.isclose(half, float(value.get("cx")), abs_tol=0.2)
    assert accessible_name(ruler) == "scale"
