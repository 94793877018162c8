"""Reporting: seed aggregation, best-per-column marking, tables, run collection, figures."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from tarot_select import TarotInputError
from tarot_select.experiments import report
from tarot_select.experiments.report import figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Spec of a fraction shown in percent (the run records' ``metric_spec``).
ACCURACY = {"name": "accuracy", "label": "accuracy", "unit": "%", "scale": 100.0, "higher_is_better": True}
BRIER = {"name": "brier_minfde", "unit": "m", "scale": 1.0, "higher_is_better": False}


def _with_spec(runs: pd.DataFrame, spec=ACCURACY, **over) -> pd.DataFrame:
    """``runs`` carrying ``spec`` (with ``over`` applied) as collect_runs leaves it."""
    runs.attrs["metric_spec"] = {**spec, **over}
    return runs


def _no_spec(runs: pd.DataFrame) -> pd.DataFrame:
    runs.attrs.clear()
    return runs


def _runs(**spec_over) -> pd.DataFrame:
    """Hand-built runs; rows deliberately out of table order ("10%" before "5%", others first)."""
    rows = [
        # (method, ratio, ratio_label, seed, metric)
        ("tarot", 0.10, "10%", 0, 0.8),
        ("tarot", 0.10, "10%", 1, 0.9),
        ("tarot", 0.10, "10%", 2, 1.0),
        ("zeta", 0.10, "10%", 0, 0.5),
        ("random", 0.10, "10%", 0, 0.70),
        ("random", 0.10, "10%", 1, 0.75),
        ("random", 0.05, "5%", 0, 0.60),
        ("tarot", 0.05, "5%", 0, 0.65),
        ("tarot", 0.05, "5%", 1, 0.67),
        ("otm", 0.230, "OTM", 0, 0.92),
        ("otm", 0.238, "OTM", 1, 0.94),
        ("full", 1.0, "full", 0, 0.95),
        ("full", 1.0, "full", 1, 0.97),
        ("target_only", math.nan, "target", 0, 0.40),
        ("alpha", 0.05, "5%", 0, 0.55),
    ]
    return _with_spec(pd.DataFrame(rows, columns=["method", "ratio", "ratio_label", "seed", "metric"]), **spec_over)


# --------------------------------------------------------------------------- summaries


def test_summary_means_sample_std_and_orders():
    wide = report.summary_table(_runs())
    assert list(wide.index) == ["target_only", "full", "random", "tarot", "otm", "alpha", "zeta"]
    labels = list(dict.fromkeys(wide.columns.get_level_values("ratio_label")))
    assert labels == ["5%", "10%", "OTM", "full", "target"]
    cell = wide.loc["tarot"]
    assert cell[("10%", "mean")] == pytest.approx(0.9)
    # sample std (ddof=1): 0.1 exactly; the population std (ddof=0) would be 0.0816
    assert report.DDOF == 1
    assert cell[("10%", "std")] == pytest.approx(0.1)
    assert cell[("10%", "n_seeds")] == 3
    assert wide.loc["random", ("10%", "mean")] == pytest.approx(0.725)
    assert wide.loc["random", ("10%", "std")] == pytest.approx(np.std([0.70, 0.75], ddof=1))
    assert math.isnan(wide.loc["random", ("5%", "std")])  # one seed -> no std
    assert wide.loc["random", ("OTM", "n_seeds")] == 0 and math.isnan(wide.loc["random", ("OTM", "mean")])
    assert wide[("5%", "best")].dtype == bool and wide[("5%", "n_seeds")].dtype == np.int64


def test_summary_long_ratio_is_mean_over_seeds():
    long = report.summary_long(_runs())
    otm = long[long["method"] == "otm"].iloc[0]
    assert otm["ratio"] == pytest.approx(0.234) and otm["n_seeds"] == 2
    assert list(long.columns) == ["method", "ratio_label", "ratio", "mean", "std", "n_seeds", "best"]


@pytest.mark.parametrize(
    ("higher", "best_10", "best_5"),
    [(True, "tarot", "tarot"), (False, "zeta", "alpha")],
)
def test_best_per_column(higher, best_10, best_5):
    best = report.summary_table(_runs(higher_is_better=higher)).xs("best", axis=1, level="field")
    assert list(best.index[best["10%"]]) == [best_10]
    assert list(best.index[best["5%"]]) == [best_5]
    # columns used by a single method have no "best"
    assert not best["full"].any() and not best["target"].any() and not best["OTM"].any()


def test_best_ties_are_shared():
    runs = pd.DataFrame(
        {
            "method": ["a", "b", "c"],
            "ratio": [0.1] * 3,
            "ratio_label": ["10%"] * 3,
            "seed": [0] * 3,
            "metric": [0.5, 0.7, 0.7],
        }
    )
    long = report.summary_long(_with_spec(runs))
    assert list(long.loc[long["best"], "method"]) == ["b", "c"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda df: df.drop(columns="seed"), "seed"),
        (lambda df: df.assign(metric=df["metric"].where(df.index != 3, np.nan)), "finite"),
        (lambda df: df.assign(ratio=df["ratio"].where(df.index != 0, 5.0)), "ratio"),
        (lambda df: pd.concat([df, df.iloc[[0]]]), "duplicated"),
        (lambda df: df.iloc[0:0], "empty"),
    ],
)
def test_summary_rejects_bad_runs(change, match):
    with pytest.raises(TarotInputError, match=match):
        report.summary_table(change(_runs()))


# --------------------------------------------------------------------------- tables


def _md_row(text: str, method: str) -> str:
    rows = [line for line in text.splitlines() if line.startswith(f"| {method} |")]
    assert len(rows) == 1, text
    return rows[0]


def test_write_tables_csv_roundtrip_and_markdown(tmp_path):
    csv, md = tmp_path / "s.csv", tmp_path / "s.md"
    long = report.write_tables(_runs(), csv, md, otm_ratio=0.234, title="Demo")
    back = pd.read_csv(csv)
    assert list(back.columns) == ["method", "ratio_label", "ratio", "mean", "std", "n_seeds", "best"]
    assert back["best"].dtype == bool and len(back) == len(long) == 9
    tarot10 = back[(back["method"] == "tarot") & (back["ratio_label"] == "10%")].iloc[0]
    assert tarot10["mean"] == pytest.approx(0.9) and tarot10["std"] == pytest.approx(0.1)
    assert tarot10["n_seeds"] == 3 and bool(tarot10["best"])
    assert math.isnan(back.loc[back["method"] == "target_only", "ratio"].iloc[0])

    text = md.read_text(encoding="utf-8")
    assert "## Demo" in text and text.splitlines()[2].startswith("**Metric: accuracy** ×100, mean ± std")
    assert "| method | 5% | 10% | OTM | full | target |" in text
    tarot = _md_row(text, "tarot")
    assert "**90.0 ± 10.0**" in tarot and "**66.0 ± 1.4 (n=2)**" in tarot
    assert "**" not in _md_row(text, "random")
    assert "72.5 ± 3.5" in _md_row(text, "random")
    assert "60.0 (n=1)" in _md_row(text, "random")  # single seed: mean only, flagged
    assert "OTM selected 23.4 % of the pool." in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv", "s.md"]


def test_markdown_lower_is_better_and_no_footnote():
    text = report.format_markdown(_runs(name="loss", label="loss", unit="", scale=1.0, higher_is_better=False))
    assert "**" in _md_row(text, "zeta") and "**" not in _md_row(text, "tarot")
    assert "lower is better" in text and "OTM selected" not in text


def test_markdown_three_significant_digits_off_unit_range():
    runs = pd.DataFrame(
        {
            "method": ["tarot", "tarot", "random"],
            "ratio": [0.1] * 3,
            "ratio_label": ["10%"] * 3,
            "seed": [0, 1, 0],
            "metric": [12.3456, 12.5456, 130.0],
        }
    )
    text = report.format_markdown(
        _with_spec(runs, name="perplexity", label="perplexity", unit="", scale=1.0, higher_is_better=False)
    )
    assert "**12.4 ± 0.1**" in _md_row(text, "tarot")
    assert "130 (n=1)" in _md_row(text, "random")


def test_spec_without_scale_or_unit_shows_raw_values():
    text = report.format_markdown(_runs(unit="", scale=1.0))
    assert "**Metric: accuracy**, mean ± std" in text and "×" not in text
    assert "**0.900 ± 0.100**" in _md_row(text, "tarot")  # 3 significant digits, no x100
    assert "0.600 (n=1)" in _md_row(text, "random")
    assert figures._axis_label({**ACCURACY, "unit": "", "scale": 1.0}) == "accuracy"
    assert figures._axis_label(ACCURACY) == "accuracy (%)"


def test_markdown_header_shows_scale_and_unit():
    first = {"unit": "m", "scale": 1.0}, "**Metric: accuracy** (m),"
    second = {"unit": "ms", "scale": 1000.0}, "**Metric: accuracy** ×1000 (ms),"
    for over, header in (first, second):
        assert header in report.format_markdown(_runs(**over))


def test_spec_drives_best_direction_not_a_keyword():
    runs = _runs(higher_is_better=False)
    best = report.summary_long(runs)
    assert list(best.loc[best["best"] & (best["ratio_label"] == "10%"), "method"]) == ["zeta"]
    # an explicit spec overrides the runs' attrs
    best = report.summary_long(runs, spec=ACCURACY)
    assert list(best.loc[best["best"] & (best["ratio_label"] == "10%"), "method"]) == ["tarot"]


def test_write_tables_bad_input_writes_nothing(tmp_path):
    bad = _runs().assign(metric=np.nan)
    with pytest.raises(TarotInputError):
        report.write_tables(bad, tmp_path / "s.csv", tmp_path / "s.md")
    with pytest.raises(TarotInputError, match="otm_ratio"):
        report.write_tables(_runs(), tmp_path / "s.csv", tmp_path / "s.md", otm_ratio=23.4)
    with pytest.raises(TarotInputError, match="metric spec"):
        report.write_tables(_no_spec(_runs()), tmp_path / "s.csv", tmp_path / "s.md")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- collect


def _run_file(path, **over):
    rec = {
        "method": "tarot",
        "ratio": 0.1,
        "ratio_label": "10%",
        "seed": 0,
        "metrics": {"accuracy": 0.9, "f1": 0.8},
        "metric": "accuracy",
        "metric_spec": ACCURACY,
        "notes": "ignored",
    }
    rec.update(over)
    path.write_text(json.dumps(rec))
    return path


def test_collect_runs_builds_tidy_frame(tmp_path):
    paths = [
        _run_file(tmp_path / "a.json"),
        _run_file(tmp_path / "b.json", seed=1, metrics={"accuracy": 1.0, "f1": 0.7}),
        _run_file(
            tmp_path / "c.json", method="target_only", ratio=None, ratio_label="target", metrics={"accuracy": 0.4}
        ),
    ]
    runs = report.collect_runs(paths)
    assert list(runs.columns[:6]) == ["method", "ratio", "ratio_label", "seed", "metric", "metric_name"]
    assert runs["metric"].tolist() == [0.9, 1.0, 0.4]
    assert runs["metric_f1"].iloc[:2].tolist() == [0.8, 0.7] and math.isnan(runs["metric_f1"].iloc[2])
    assert "notes" not in runs.columns and "metric_accuracy" not in runs.columns
    assert math.isnan(runs["ratio"].iloc[2]) and runs["seed"].dtype == np.int64
    wide = report.summary_table(runs)
    assert wide.loc["tarot", ("10%", "mean")] == pytest.approx(0.95)


def test_collect_runs_rejects_bad_files(tmp_path):
    good = _run_file(tmp_path / "good.json")
    no_metrics = tmp_path / "no_metrics.json"
    rec = json.loads(good.read_text())
    del rec["metrics"]
    no_metrics.write_text(json.dumps(rec))
    with pytest.raises(TarotInputError, match=r"no_metrics\.json.*metrics"):
        report.collect_runs([good, no_metrics])
    nan_file = _run_file(tmp_path / "nan_metric.json", seed=2, metrics={"accuracy": float("nan")})
    with pytest.raises(TarotInputError, match=r"nan_metric\.json.*finite"):
        report.collect_runs([good, nan_file])
    dup = _run_file(tmp_path / "dup.json")
    with pytest.raises(TarotInputError, match=r"dup\.json.*already read"):
        report.collect_runs([good, dup])
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(TarotInputError, match=r"junk\.json"):
        report.collect_runs([tmp_path / "junk.json"])


def _brier_records(tmp_path):
    """Runs of a lower-is-better metric in metres: b has the smallest mean at 10%."""
    values = {("a", 0): 1.8, ("a", 1): 1.6, ("b", 0): 1.2, ("b", 1): 1.3, ("c", 0): 2.5}
    return [
        _run_file(
            tmp_path / f"{m}_seed{s}.json",
            method=m,
            seed=s,
            metrics={"brier_minfde": v, "ade": v / 2},
            metric="brier_minfde",
            metric_spec=BRIER,
        )
        for (m, s), v in values.items()
    ]


def test_lower_is_better_spec_marks_smallest_mean(tmp_path):
    runs = report.collect_runs(_brier_records(tmp_path))
    assert runs.attrs["metric_spec"] == {**BRIER, "label": "brier_minfde"}
    long = report.summary_long(runs)
    assert list(long.loc[long["best"], "method"]) == ["b"]
    out = tmp_path / "out"
    (tmp_path / "otm.json").write_text(json.dumps({"chosen_ratio": 0.25}))
    report.write_task_tables(
        _brier_records(tmp_path), out / "t.csv", out / "t.md", "traj", otm_json=tmp_path / "otm.json"
    )
    text = (out / "t.md").read_text(encoding="utf-8")
    assert text.startswith("## traj: downstream brier_minfde\n\n**Metric: brier_minfde** (m), mean ± std")
    assert "lower is better" in text and "OTM selected 25.0 % of the pool." in text
    assert "**1.25 ± 0.07**" in _md_row(text, "b")  # raw values (scale 1), 3 significant digits
    assert "1.70 ± 0.14" in _md_row(text, "a") and "**" not in _md_row(text, "a")
    back = pd.read_csv(out / "t.csv")
    assert back.loc[back["method"] == "b", "mean"].iloc[0] == pytest.approx(1.25)
    png = report.plot_task_metric_vs_ratio(_brier_records(tmp_path), out / "f.png", "traj")
    _assert_png(png)


def _transfer_records(tmp_path, architectures=None):
    """Brier runs whose records also hold the proxy architecture's metric on the same selection."""
    values = {  # (method, ratio_label, seed): (downstream, proxy architecture)
        ("a", "10%", 0): (1.0, 3.0),
        ("a", "10%", 1): (1.2, 3.4),
        ("b", "10%", 0): (1.5, 2.0),
        ("b", "10%", 1): (1.7, 2.2),
        ("full", "full", 0): (0.9, 0.5),
    }
    extra = {"architectures": architectures} if architectures else {}
    return [
        _run_file(
            tmp_path / f"{m}_{s}.json",
            method=m,
            seed=s,
            ratio=0.1 if lab == "10%" else 1.0,
            ratio_label=lab,
            metrics={"brier_minfde": d, "proxy_arch_brier_minfde": p},
            metric="brier_minfde",
            metric_spec=BRIER,
            **extra,
        )
        for (m, lab, s), (d, p) in values.items()
    ]


def _section(text: str, start: str) -> list[str]:
    """The Markdown table rows of the paragraph that starts with ``start``."""
    block = text.split(start, 1)[1].split("\n\n")[1]
    return [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| selection")]


def test_transfer_table_sets_each_selection_under_both_architectures(tmp_path):
    arch = {"downstream": "wayformer", "proxy_arch": "autobots"}
    report.write_task_tables(_transfer_records(tmp_path, arch), tmp_path / "t.csv", tmp_path / "t.md", "traj")
    text = (tmp_path / "t.md").read_text(encoding="utf-8")
    assert "downstream model (wayformer) and with the proxy's architecture (autobots)" in text
    assert "| selection | wayformer | autobots |" in text
    rows = _section(text, "Transfer:")
    # a wins at 10% with the downstream architecture (1.10 < 1.60), b with the proxy's (2.10 < 3.20)
    assert rows == [
        "| a 10% | **1.10 ± 0.14** | 3.20 ± 0.28 |",
        "| b 10% | 1.60 ± 0.14 | **2.10 ± 0.14** |",
        "| full | 0.900 (n=1) | 0.500 (n=1) |",
    ]
    # the main table and its CSV still hold the downstream metric only
    assert "**1.10 ± 0.14**" in _md_row(text, "a")
    assert sorted(pd.read_csv(tmp_path / "t.csv")["mean"].round(3)) == [0.9, 1.1, 1.6]


def test_transfer_table_has_a_column_per_other_model(tmp_path):
    records = _transfer_records(tmp_path, {"downstream": "llama", "transfer": "qwen", "proxy_arch": "llama"})
    for path in records:  # a second model family trained on the same selections: transfer_<metric>
        rec = json.loads(path.read_text())
        rec["metrics"]["transfer_brier_minfde"] = rec["metrics"]["brier_minfde"] + 10.0
        path.write_text(json.dumps(rec))
    report.write_task_tables(records, tmp_path / "t.csv", tmp_path / "t.md", "traj")
    text = (tmp_path / "t.md").read_text(encoding="utf-8")
    assert "with the transfer model (qwen) and with the proxy's architecture (llama)" in text
    assert "| selection | llama | qwen | llama |" in text
    assert _section(text, "Transfer:")[0] == "| a 10% | **1.10 ± 0.14** | **11.1 ± 0.1** | 3.20 ± 0.28 |"


def test_pool_table_sets_target_sets_and_models_side_by_side(tmp_path):
    arch = {"downstream": "llama", "transfer": "qwen"}
    units = {}
    for unit, shift in (("p-mmlu", 0.0), ("p-bbh", 0.5)):
        folder = tmp_path / unit
        folder.mkdir()
        units[unit] = _transfer_records(folder, arch)
        for path in units[unit]:
            rec = json.loads(path.read_text())
            rec["metrics"] = {"brier_minfde": rec["metrics"]["brier_minfde"] + shift}
            rec["metrics"]["transfer_brier_minfde"] = rec["metrics"]["brier_minfde"] + 1.0
            path.write_text(json.dumps(rec))
    otm = tmp_path / "otm.json"
    otm.write_text(json.dumps({"chosen_ratio": 0.125}))
    long = report.write_pool_table(units, tmp_path / "p.csv", tmp_path / "p.md", "p", {"p-bbh": otm})
    text = (tmp_path / "p.md").read_text(encoding="utf-8")
    header = "| selection | p-mmlu: brier_minfde (m) (llama) | p-mmlu: brier_minfde (m) (qwen) | "
    assert header + "p-bbh: brier_minfde (m) (llama) | p-bbh: brier_minfde (m) (qwen) |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| selection")]
    # the tables' method order (references first); lower is better, so a (1.10) beats b (1.60)
    # at 10% in every column
    assert rows[0] == "| full | 0.900 (n=1) | 1.90 (n=1) | 1.40 (n=1) | 2.40 (n=1) |"
    assert rows[1] == "| a 10% | **1.10 ± 0.14** | **2.10 ± 0.14** | **1.60 ± 0.14** | **2.60 ± 0.14** |"
    assert rows[2] == "| b 10% | 1.60 ± 0.14 | 2.60 ± 0.14 | 2.10 ± 0.14 | 3.10 ± 0.14 |"
    assert len(long) == 2 * 2 * 3 and set(long["unit"]) == {"p-mmlu", "p-bbh"}
    with pytest.raises(TarotInputError, match="no unit"):
        report.write_pool_table({}, tmp_path / "q.csv", tmp_path / "q.md", "p")


def test_no_transfer_table_without_proxy_architecture_metrics(tmp_path):
    report.write_task_tables(_brier_records(tmp_path), tmp_path / "t.csv", tmp_path / "t.md", "traj")
    assert "Transfer" not in (tmp_path / "t.md").read_text(encoding="utf-8")


def test_share_of_each_source_kept_by_each_selection(tmp_path):
    sizes = {"source": {"womd": 10, "av2": 20, "nuplan": 40}}
    records = [
        _run_file(
            tmp_path / f"{m}.json",
            method=m,
            ratio=r,
            ratio_label=lab,
            composition={"source": comp},
            group_sizes=sizes,
            group_totals={"source": 3},
        )
        for m, r, lab, comp in [
            ("tarot", 0.1, "10%", {"womd": 3, "av2": 4}),
            ("random", 0.1, "10%", {"womd": 1, "av2": 2, "nuplan": 4}),
            ("otm", 0.5, "OTM", {"womd": 5, "av2": 10, "nuplan": 20}),
        ]
    ]
    report.write_task_tables(records, tmp_path / "t.csv", tmp_path / "t.md", "traj")
    text = (tmp_path / "t.md").read_text(encoding="utf-8")
    assert "womd: 10" in text and "all: 70" in text and "| selection | av2 | nuplan | womd | all |" in text
    assert _section(text, "Share of each source's pool") == [
        "| random 10% | 10 | 10 | 10 | 10.0 |",
        "| tarot 10% | 20 | 0 | 30 | 10.0 |",
        "| otm | 50 | 50 | 50 | 50.0 |",
    ]
    assert "largest group's share" not in text  # the share table replaces the summary for few groups


def test_collect_runs_requires_a_metric_spec(tmp_path):
    good = _run_file(tmp_path / "good.json")
    old = tmp_path / "old.json"
    rec = json.loads(_run_file(old, seed=1).read_text())
    del rec["metric_spec"]
    old.write_text(json.dumps(rec))
    with pytest.raises(TarotInputError, match=r"old\.json.*metric_spec.*rerunning the evaluate rule"):
        report.collect_runs([good, old])


def test_collect_runs_rejects_disagreeing_specs(tmp_path):
    good = _run_file(tmp_path / "good.json")
    other = _run_file(tmp_path / "raw.json", seed=1, metric_spec={**ACCURACY, "unit": "", "scale": 1.0})
    with pytest.raises(TarotInputError, match=r"raw\.json: metric_spec .* differs from .* in .*good\.json"):
        report.collect_runs([good, other])


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({**ACCURACY, "name": "f1"}, "names 'f1'"),
        ({k: v for k, v in ACCURACY.items() if k != "scale"}, "lacks key.*scale"),
        ({**ACCURACY, "scale": "100"}, "scale"),
        ({**ACCURACY, "scale": 0.0}, "scale"),
        ({**ACCURACY, "higher_is_better": "yes"}, "higher_is_better"),
        ({**ACCURACY, "unit": None}, "unit"),
        ("accuracy", "must be an object"),
    ],
)
def test_collect_runs_rejects_bad_specs(tmp_path, spec, match):
    path = _run_file(tmp_path / "bad_spec.json", metric_spec=spec)
    with pytest.raises(TarotInputError, match=r"bad_spec\.json.*" + match):
        report.collect_runs([path])


# --------------------------------------------------------------------------- figures


def _assert_png(path, min_side=200):
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] >= min_side and img.shape[1] >= min_side
    assert float(img[..., :3].std()) > 0.01  # not a blank canvas


def test_plot_metric_vs_ratio_writes_png(tmp_path):
    out = report.plot_metric_vs_ratio(_runs(), tmp_path / "fig" / "ratio.png", title="demo")
    assert out == tmp_path / "fig" / "ratio.png"
    _assert_png(out)
    assert [p.name for p in (tmp_path / "fig").iterdir()] == ["ratio.png"]


def _captured_figures(monkeypatch):
    """The figures the report module saves, in order (the PNGs are still written)."""
    seen = []
    real = figures._save_png
    monkeypatch.setattr(figures, "_save_png", lambda fig, path: (seen.append(fig), real(fig, path))[1])
    return seen


def _rendered(fig):
    """Draw ``fig`` on an Agg canvas (as it was saved) and return the renderer, for label extents."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    return renderer


#: The default config's digits table (README): accuracy (%) mean and std over 3 seeds per ratio.
DEFAULT_RUN = {
    "random": [(37.0, 4.3), (45.2, 2.6), (47.6, 3.3), (61.4, 2.1)],
    "dsdm": [(31.4, 1.9), (43.8, 1.1), (57.8, 0.4), (69.8, 0.5)],
    "less": [(28.8, 0.1), (32.1, 0.8), (37.6, 1.2), (61.6, 1.3)],
    "infdist": [(42.3, 2.9), (48.8, 1.4), (50.0, 3.7), (57.6, 1.2)],
    "tarot": [(64.0, 0.7), (69.0, 0.0), (74.1, 1.4), (77.6, 1.0)],
    "tarot_concat": [(63.6, 1.9), (71.7, 1.2), (73.6, 1.2), (77.7, 0.9)],
    "tarot_weighted": [(63.8, 2.8), (69.5, 1.7), (73.0, 1.8), (77.5, 1.3)],
}


def _default_like_runs(otm_ratio: float) -> pd.DataFrame:
    """The default run's table as runs (seeds mean - std, mean, mean + std), OTM at ``otm_ratio``
    just under the tarot curves, the full pool and the target set as references."""

    def seeds(mean, std):
        return [(s, (mean + d) / 100.0) for s, d in enumerate((-std, 0.0, std))]

    rows = [
        (m, r, f"{r * 100:g}%", s, v)
        for m, cells in DEFAULT_RUN.items()
        for r, (mean, std) in zip((0.05, 0.1, 0.2, 0.5), cells)
        for s, v in seeds(mean, std)
    ]
    rows += [("otm", otm_ratio, "OTM", s, v) for s, v in seeds(79.5, 0.7)]
    rows += [("full", 1.0, "full", s, v) for s, v in seeds(72.2, 1.3)]
    rows += [("target_only", math.nan, "target", s, v) for s, v in seeds(58.9, 6.8)]
    return _with_spec(pd.DataFrame(rows, columns=["method", "ratio", "ratio_label", "seed", "metric"]))


@pytest.mark.parametrize(
    ("fraction", "text"), [(0.43857150, "43.9 %"), (0.4292865, "42.9 %"), (0.05, "5.0 %"), (1.0, "100.0 %")]
)
def test_format_ratio_rounds_to_one_decimal(fraction, text):
    assert figures.format_ratio(fraction) == text


def test_otm_label_names_the_variant_and_the_rounded_ratio():
    assert figures.otm_label("otm", 0.43857) == "OTM 43.9 %"
    assert figures.otm_label("otm_weighted", 0.2) == "OTM weighted 20.0 %"
    with pytest.raises(TarotInputError, match="finite"):
        figures.format_ratio(math.nan)


def test_ratio_ticks_are_the_distinct_fixed_ratios():
    assert figures.ratio_ticks([10.0, 5.0, 50.0, 5.0, 20.000000001]) == [5.0, 10.0, 20.0, 50.0]
    assert figures.ratio_ticks([float(x) for x in range(1, 14)]) == []  # too many: matplotlib's locator
    assert figures.ratio_ticks([]) == []


def test_otm_is_a_rounded_note_not_a_tick_and_no_labels_collide(tmp_path, monkeypatch):
    seen = _captured_figures(monkeypatch)
    report.plot_metric_vs_ratio(_default_like_runs(0.43857150), tmp_path / "ratio.png")  # was "43.857150%"
    fig = seen[0]
    ax = fig.axes[0]
    fmt = ax.xaxis.get_major_formatter()
    assert [fmt(v, i) for i, v in enumerate(ax.get_xticks())] == ["5%", "10%", "20%", "50%"]
    renderer = _rendered(fig)
    ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
    assert len(ticks) == 4
    assert not any(a.overlaps(b) for i, a in enumerate(ticks) for b in ticks[i + 1 :])
    notes = [t for t in ax.texts if t.get_text().startswith("OTM")]
    assert [t.get_text() for t in notes] == ["OTM 43.9 %"]
    note = notes[0].get_window_extent(renderer)
    assert not any(note.overlaps(t) for t in ticks)
    frame = ax.get_window_extent(renderer)
    assert frame.contains(note.x0, note.y0) and frame.contains(note.x1, note.y1)  # inside the axes
    # the note hides no curve, error bar, marker or reference line (in the default run it first
    # sat on the tarot curves between 20 % and 50 %)
    lines, points = figures._obstacles(ax)
    assert lines and len(points) > 28
    assert not any(path.intersects_bbox(note, filled=False) for path in lines)
    assert note.count_contains(points) == 0
    # the star sits at the chosen ratio, and every method has its legend entry
    star = next(line for line in ax.lines if line.get_marker() == "*")
    assert star.get_xdata()[0] == pytest.approx(43.857150)
    labels = fig.legends[0].get_texts()
    legend = [t.get_text() for t in labels]
    for method in ("random", "dsdm", "less", "infdist", "tarot", "tarot_concat", "tarot_weighted", "otm (43.9 %)"):
        assert method in legend, legend
    # the legend is beside the axes: it hides no curve
    assert not fig.legends[0].get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))


def test_curves_at_one_ratio_are_drawn_apart_but_ticks_stay_exact(tmp_path, monkeypatch):
    seen = _captured_figures(monkeypatch)
    report.plot_metric_vs_ratio(_default_like_runs(0.3), tmp_path / "ratio.png")
    ax = seen[0].axes[0]
    curves = [line for line in ax.lines if line.get_marker() in figures._MARKERS and len(line.get_xdata()) == 4]
    first = sorted(float(line.get_xdata()[0]) for line in curves)
    assert len(first) == 7 and len(set(first)) == 7  # seven methods, seven x positions at 5 %
    assert all(4.0 < x < 6.0 for x in first)  # all near 5 %
    assert list(ax.get_xticks()) == [5.0, 10.0, 20.0, 50.0]


def test_otm_weighted_is_a_second_star_in_the_otm_column(tmp_path, monkeypatch):
    seen = _captured_figures(monkeypatch)
    runs = _runs()
    extra = runs[runs["method"] == "otm"].assign(method="otm_weighted", metric=[0.96, 0.98])
    runs = _with_spec(pd.concat([runs, extra], ignore_index=True))
    report.plot_metric_vs_ratio(runs, tmp_path / "ratio.png")
    labels = seen[0].axes[0].get_legend_handles_labels()[1]
    assert "otm (23.4 %)" in labels and "otm_weighted (23.4 %)" in labels
    ax = seen[0].axes[0]
    # one selection, two trainings: one note for both stars (two notes at one ratio were written
    # over each other), and the stars side by side, neither under the note (seen on the
    # paper-mini segmentation figure: the note's box missed the star's centre, hid half of it)
    assert [t.get_text() for t in ax.texts] == ["OTM, OTM weighted 23.4 %"]
    renderer = _rendered(seen[0])
    stars = [line for line in ax.lines if line.get_marker() == "*"]
    centres = [line.get_transform().transform(line.get_xydata()[0]) for line in stars]
    assert len(centres) == 2 and abs(centres[0][0] - centres[1][0]) > 10
    radius = 7.5 * seen[0].dpi / 72.0  # half the star's markersize
    note = ax.texts[0].get_window_extent(renderer)
    assert note.padded(radius).count_contains(np.array(centres)) == 0
    text = report.format_markdown(runs)
    assert "**97.0 ± 1.4 (n=2)**" in _md_row(text, "otm_weighted") and "**" not in _md_row(text, "otm")
    assert text.index("| otm |") < text.index("| otm_weighted |")


def test_failed_plot_leaves_nothing(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as fh:
            fh.write(PNG_SIGNATURE)  # a partial file
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        report.plot_metric_vs_ratio(_runs(), tmp_path / "ratio.png")
    assert list(tmp_path.iterdir()) == []


def _tsne_data(rng):
    target = rng.normal(size=(25, 6)) + 2.0
    candidates = rng.normal(size=(120, 6))
    sels = {"random": rng.choice(120, 20, replace=False), "tarot": np.arange(10, 30), "less": np.array([3, 3, 5])}
    return target, sels, candidates


def test_plot_tsne_writes_png_deterministically(tmp_path, rng):
    target, sels, candidates = _tsne_data(rng)
    a = report.plot_tsne(target, sels, candidates, tmp_path / "a.png", seed=3, max_points=40, title="t")
    b = report.plot_tsne(target, sels, candidates, tmp_path / "b.png", seed=3, max_points=40, title="t")
    _assert_png(a)
    assert a.read_bytes() == b.read_bytes()  # seeded subsample + seeded t-SNE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda t, s, c: (t[:, :5], s, c), "dimension mismatch"),
        (lambda t, s, c: (t, {"tarot": np.array([0, 120])}, c), r"\[0, 120\)"),
        (lambda t, s, c: (t, {"tarot": np.ones(120, dtype=bool)}, c), "integer"),
        (lambda t, s, c: (t, {}, c), "non-empty"),
        (lambda t, s, c: (t, s, np.where(np.arange(120)[:, None] == 7, np.nan, c)), "NaN"),
    ],
)
def test_plot_tsne_rejects_bad_input_and_writes_nothing(tmp_path, rng, make, match):
    target, sels, candidates = make(*_tsne_data(rng))
    with pytest.raises(TarotInputError, match=match):
        report.plot_tsne(target, sels, candidates, tmp_path / "t.png")
    assert list(tmp_path.iterdir()) == []


def _write_gradient_files(tmp_path, rng):
    """Un-whitened features with two checkpoint blocks (weights 0.25 and 4), the whitened files
    a whiten job would write beside them, and three selection CSVs."""
    from tarot_select.io import save_features
    from tarot_select.result import Selection

    ckpts = [{"name": "a.pt", "dim": 4, "weight": 0.25}, {"name": "b.pt", "dim": 4, "weight": 4.0}]
    raw = {"candidates": rng.normal(size=(60, 8)) * 5.0, "targets": rng.normal(size=(12, 8)) + 3.0}
    paths = {}
    for split, arr in raw.items():
        paths[split] = save_features(tmp_path / f"{split}.npy", arr.astype(np.float32), meta={"checkpoints": ckpts})
        white = rng.normal(size=(arr.shape[0], 4))
        white /= np.linalg.norm(white, axis=1, keepdims=True)
        paths[f"wfd_{split}"] = save_features(
            tmp_path / f"wfd_{split}.npy", white.astype(np.float32), meta={"whitening": {"method": "cholesky"}}
        )
    csvs = []
    for name, idx in {"tarot.r0.1": [1, 5, 9, 30], "dsdm.r0.1": [2, 3, 4, 40], "otm": list(range(10, 25))}.items():
        method = name.split(".")[0]
        sel = Selection(indices=np.array(idx), method=method, n_candidates=60, budget=len(idx))
        csvs.append(sel.to_csv(tmp_path / f"{name}.csv"))
    return raw, paths, csvs


def _summed(x: np.ndarray) -> np.ndarray:
    """What TAROT whitens: the checkpoint sum, each stored block sqrt(w) P g divided by sqrt(w)."""
    return x[:, :4].astype(np.float32) / 0.5 + x[:, 4:].astype(np.float32) / 2.0


def test_tsne_embeds_the_unwhitened_gradient_sum_not_the_whitened_features(tmp_path, rng, monkeypatch):
    from tarot_select.experiments.report import tsne

    raw, paths, csvs = _write_gradient_files(tmp_path, rng)
    embedded = []

    def fake_embed(points, seed):
        embedded.append(points.copy())
        return np.random.default_rng(seed).normal(size=(len(points), 2))

    monkeypatch.setattr(tsne, "_tsne_embed", fake_embed)
    out = tsne.plot_tsne_files(
        paths["candidates"], paths["targets"], csvs, tmp_path / "t.png", seed=0, max_points=500, title="t"
    )
    _assert_png(out)
    (points,) = embedded
    want = np.concatenate([_summed(raw["targets"]), _summed(raw["candidates"])])  # targets first, then the pool
    assert points.shape == (72, 4)
    np.testing.assert_allclose(points, want, rtol=1e-5, atol=1e-5)
    # the rule's whitened files are refused: a t-SNE of them is one isotropic cloud
    with pytest.raises(TarotInputError, match="whitened"):
        tsne.plot_tsne_files(
            paths["wfd_candidates"], paths["wfd_targets"], csvs, tmp_path / "w.png", seed=0, max_points=500, title="t"
        )
    assert not (tmp_path / "w.png").exists()
    # targets from other checkpoints than the pool's cannot be embedded with it
    from tarot_select.io import save_features

    other = [{"name": "a.pt", "dim": 4, "weight": 1.0}, {"name": "b.pt", "dim": 4, "weight": 4.0}]
    odd = save_features(tmp_path / "odd.npy", raw["targets"].astype(np.float32), meta={"checkpoints": other})
    with pytest.raises(TarotInputError, match="checkpoint blocks"):
        tsne.plot_tsne_files(paths["candidates"], odd, csvs, tmp_path / "o.png", seed=0, max_points=500, title="t")


def test_tsne_panels_show_the_pool_by_source_and_each_selection(tmp_path, rng, monkeypatch):
    from tarot_select.experiments.report import tsne

    _, paths, csvs = _write_gradient_files(tmp_path, rng)
    seen = []
    real = tsne._save_png
    monkeypatch.setattr(tsne, "_save_png", lambda fig, path: (seen.append(fig), real(fig, path))[1])
    sources = np.array(["clean"] * 30 + ["rotated"] * 20 + ["noisy"] * 10)
    tsne.plot_tsne_files(
        paths["candidates"], paths["targets"], csvs, tmp_path / "t.png", seed=0, max_points=500, title="t",
        sources=sources,
    )  # fmt: skip
    fig = seen[0]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    titles = [ax.get_title() for ax in axes]
    assert titles[0] == "pool (60 candidates) and targets"
    assert [t.split("\n")[0] for t in titles[1:]] == [
        "tarot.r0.1: 4 selected",
        "dsdm.r0.1: 4 selected",
        "otm: 15 selected",
    ]
    assert [t.split("\n")[2] for t in titles[1:]] == ["clean 75 %, rotated 25 %"] * 2 + ["clean 100 %"]
    assert all(re.fullmatch(r"covers \d+ % of targets", t.split("\n")[1]) for t in titles[1:]), titles
    # the pool panel: every candidate, one colour per source; then targets
    pool, targets = axes[0].collections
    assert len(pool.get_offsets()) == 60 and len(np.unique(pool.get_facecolors(), axis=0)) == 3
    assert len(targets.get_offsets()) == 12
    # a method panel: its unselected candidates, its selection, the targets
    rest, chosen, _ = axes[3].collections
    assert len(rest.get_offsets()) == 45 and len(chosen.get_offsets()) == 15
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["target", "not selected", "clean", "rotated", "noisy"]
    with pytest.raises(TarotInputError, match="one label per candidate"):
        tsne.plot_tsne_files(
            paths["candidates"], paths["targets"], csvs, tmp_path / "x.png", seed=0, max_points=500, title="t",
            sources=sources[:-1],
        )  # fmt: skip


def test_tsne_subsample_keeps_targets_and_selections_then_fills_with_the_pool():
    from tarot_select.experiments.report import tsne

    union = np.array([3, 50, 77])
    tgt, cand = tsne._subsample(10, 100, union, 40, seed=0)
    assert list(tgt) == list(range(10)) and len(cand) == 30 and set(union) <= set(cand)
    assert len(np.unique(cand)) == 30 and cand.max() < 100
    tgt, cand = tsne._subsample(10, 100, union, 500, seed=0)  # everything fits
    assert len(tgt) == 10 and list(cand) == list(range(100))
    tgt, cand = tsne._subsample(10, 100, np.arange(60), 35, seed=0)  # even targets + selections overflow
    assert len(tgt) + len(cand) == 35 and set(cand) <= set(range(60))


def test_target_coverage_counts_targets_with_a_selected_near_neighbour():
    from tarot_select.experiments.report import tsne

    rng = np.random.default_rng(0)
    pool = np.concatenate([rng.normal(size=(20, 3)), rng.normal(size=(20, 3)) + 50.0])  # two far modes
    target = np.concatenate([rng.normal(size=(6, 3)), rng.normal(size=(4, 3)) + 50.0])
    idx = np.arange(100, 140)  # candidate indices of the embedded rows
    sels = {"first_mode": idx[:20], "both": idx[::2], "none": np.array([], dtype=np.int64), "far": idx[20:21]}
    got = tsne.target_coverage(target, pool, idx, sels, k=5)
    assert got["first_mode"] == pytest.approx(0.6) and got["both"] == 1.0 and got["none"] == 0.0
    assert 0.0 <= got["far"] <= 0.4  # one candidate of the second mode: among the 5 nearest of some of its targets
    assert tsne.target_coverage(target, pool, idx, {"all": idx}, k=500)["all"] == 1.0  # k capped at the pool
