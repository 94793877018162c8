"""The paper's exhibits (experiments/report/paper.py) from hand-written run records and LDS
scores: the paper's numbers beside ours, "not run" for what a run lacks, transfer models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tarot_select import TarotInputError
from tarot_select.experiments.report import claims as cl
from tarot_select.experiments.report import paper

ROOT = Path(__file__).resolve().parents[2]
NUMBERS = yaml.safe_load((ROOT / "workflow" / "resources" / "paper_numbers.yaml").read_text())
PNG = b"\x89PNG\r\n\x1a\n"
MIOU = {"name": "miou", "label": "mIoU", "unit": "%", "scale": 100.0, "higher_is_better": True}
EXACT = {"name": "bbh_exact_match", "label": "BBH exact match", "unit": "%", "scale": 100.0, "higher_is_better": True}


def _records(folder: Path, spec: dict, runs: dict, architectures: dict | None = None, transfer=None) -> list[str]:
    """Run records ``{(method, ratio or None): [value per seed]}``, as the evaluate rule writes them."""
    paths = []
    for (method, ratio), values in runs.items():
        for seed, value in enumerate(values):
            labels = {"otm": "OTM", "otm_weighted": "OTM", "full": "full", "target_only": "target"}
            label = labels.get(method) or f"{100 * ratio:g}%"
            metrics = {spec["name"]: value}
            if transfer is not None:
                metrics[f"transfer_{spec['name']}"] = transfer[(method, ratio)][seed]
            rec = {
                "method": method,
                "ratio": 1.0 if method == "full" else ratio,
                "ratio_label": label,
                "seed": seed,
                "metrics": metrics,
                "metric": spec["name"],
                "metric_spec": spec,
            }
            if architectures:
                rec["architectures"] = architectures
            path = folder / f"{method}.{ratio}.{seed}.json"
            path.write_text(json.dumps(rec))
            paths.append(str(path))
    return paths


def _segmentation(tmp_path: Path) -> list[str]:
    folder = tmp_path / "seg"
    folder.mkdir()
    runs = {
        ("random", 0.05): [0.30, 0.32],
        ("less", 0.05): [0.31, 0.31],
        ("tarot", 0.05): [0.29, 0.30],
        ("random", 0.2): [0.33, 0.35],
        ("tarot", 0.2): [0.38, 0.37],
        ("otm", 0.3): [0.40, 0.41],
        ("full", None): [0.40, 0.41],
        ("target_only", None): [0.42, 0.42],
    }
    return _records(folder, MIOU, runs)


def _instruct(tmp_path: Path) -> list[str]:
    folder = tmp_path / "bbh"
    folder.mkdir()
    runs = {
        ("full", None): [0.10, 0.12],
        ("random", 0.05): [0.02, 0.04],
        ("less", 0.05): [0.22, 0.23],
        ("tarot", 0.05): [0.20, 0.20],
        ("otm_weighted", 0.04): [0.17, 0.18],
    }
    transfer = {key: [v + 0.05 for v in values] for key, values in runs.items()}
    transfer[("random", 0.05)] = [0.30, 0.30]  # random ahead of TAROT on the transfer model
    arch = {"downstream": "llama-tiny", "transfer": "qwen-tiny"}
    return _records(folder, EXACT, runs, arch, transfer)


def _lds(tmp_path: Path) -> str:
    values = {"wfd": 0.30, "wfd_no_norm": 0.20, "wfd_no_whiten": 0.25, "wfd_no_whiten_no_norm": 0.10, "trak": 0.35}
    records = [
        {
            "method": m,
            "ensemble": e,
            "lds": v + 0.01 * e,
            "std": 0.01,
            "ci_low": v - 0.02,
            "ci_high": v + 0.02 + 0.01 * e,
            "n_targets": 50,
            "n_excluded": 0,
            "n_subsets": 20,
        }
        for m, v in values.items()
        for e in (1, 4)
    ]
    path = tmp_path / "lds.json"
    path.write_text(json.dumps({"records": records, "differences": []}))
    return str(path)


def test_unit_results_summarise_the_records_and_find_the_transfer_model(tmp_path):
    seg = paper.unit_results(_segmentation(tmp_path), "segmentation", "segmentation")
    assert seg.cells[("tarot", "20%")].mean == pytest.approx(0.375) and seg.cells[("tarot", "20%")].n == 2
    assert seg.otm_ratio == pytest.approx(0.3) and seg.transfer_model is None
    bbh = paper.unit_results(_instruct(tmp_path), "instruct-bbh", "instruct", "bbh")
    assert bbh.model == "llama-tiny" and bbh.transfer_model == "qwen-tiny"
    assert bbh.transfer_cells[("random", "5%")].mean == pytest.approx(0.30)
    assert bbh.transfer_cells[("tarot", "5%")].mean == pytest.approx(0.25)


def test_motions_downstream_model_is_the_transfer_model_when_it_differs_from_the_proxy(tmp_path):
    spec = {"name": "brier", "label": "Brier-minFDE", "unit": "m", "scale": 1.0, "higher_is_better": False}
    folder = tmp_path / "motion"
    folder.mkdir()
    records = _records(
        folder,
        spec,
        {("tarot", 0.2): [7.0, 7.2], ("random", 0.2): [9.0, 9.4]},
        {"downstream": "wayformer", "proxy_arch": "autobots"},
    )
    unit = paper.unit_results(records, "motion", "motion")
    assert unit.transfer_model == "wayformer" and unit.transfer_cells == unit.cells
    assert cl.selection_transfers(unit, NUMBERS, "motion").verdict == cl.HOLDS


def test_table6_sets_the_papers_columns_beside_the_runs(tmp_path):
    out = tmp_path / "tab6.md"
    paper.write_tab6({"toy": _lds(tmp_path)}, NUMBERS, out)
    text = out.read_text()
    assert "| variant | paper E=1 | paper E=10 | paper E=50 | toy E=1 | toy E=4 |" in text
    assert "| WFD | 0.028 | 0.065 | 0.098 | 0.310 ± 0.010 | 0.340 ± 0.010 |" in text
    assert "| TRAK (not in Tab. 6) | – | – | – | 0.360" in text
    paper.write_tab6({}, NUMBERS, out)
    assert "| WFD | 0.028 | 0.065 | 0.098 | not run (no LDS benchmark in this config) |" in out.read_text()


def test_table2_puts_ours_beside_the_paper_and_says_not_run_for_what_the_run_lacks(tmp_path):
    out = tmp_path / "tab2.md"
    units = {"instruct-bbh": {"kind": "instruct", "target": "bbh", "records": _instruct(tmp_path)}}
    paper.write_tab2(units, NUMBERS, out)
    text = out.read_text()
    assert "| 5% TAROT | 65.0 | 66.9 | 20.0 ± 0.0 |" in text
    assert "| TAROT-OTM (OTM + OT-potential weights) | 63.6 [0.21 %] | 68.9 [0.13 %] | 17.5 ± 0.7 [4.0 %] |" in text
    assert "| 5% DsDm | – | – | not run |" in text  # not in the paper's table, not in this run
    assert "| 5% Random | 63.5 | 30.0 ± 0.0 |" in text  # transfer: the paper's, then qwen-tiny's
    paper.write_tab2({}, NUMBERS, out)
    text = out.read_text()
    assert "| 5% TAROT | 66.0 | 74.1 | not run | 65.0 | 66.9 | not run |" in text


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_the_figures_draw_the_run_or_a_not_run_panel(tmp_path, monkeypatch):
    import matplotlib.image as mpimg

    seen = {}
    real = paper._save_png
    monkeypatch.setattr(paper, "_save_png", lambda fig, path: (seen.update({Path(path).name: fig}), real(fig, path))[1])
    units = {"segmentation": {"kind": "segmentation", "target": None, "records": _segmentation(tmp_path)}}
    for exhibit, name in (("fig5", "fig5.png"), ("fig7", "fig7.png")):
        paper.plot_ratio_exhibit(units, NUMBERS, tmp_path / name, exhibit)
    paper.plot_fig4({"toy": _lds(tmp_path)}, NUMBERS, tmp_path / "fig4.png")
    paper.plot_fig4({}, NUMBERS, tmp_path / "fig4_none.png")
    paper.plot_tsne_exhibit({"segmentation": tmp_path / "fig5.png"}, NUMBERS, tmp_path / "fig6.png")
    paper.plot_tsne_exhibit({}, NUMBERS, tmp_path / "fig6_none.png")
    for name in ("fig5.png", "fig7.png", "fig4.png", "fig4_none.png", "fig6.png", "fig6_none.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG, name
        img = mpimg.imread(tmp_path / name)
        assert min(img.shape[:2]) >= 200 and float(img[..., :3].std()) > 0.01, name  # not blank
    # Fig. 5 draws this run's means (mIoU in %): TAROT's curve 29.5 at 5 %, 37.5 at 20 %
    run_axes = seen["fig5.png"].axes[0]
    curves = [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in run_axes.get_lines()]
    assert ([5.0, 20.0], [29.5, 37.5]) in [(x, [round(float(v), 6) for v in y]) for x, y in curves]
    assert "not run" not in _texts(seen["fig5.png"])
    # a kind the run lacks is a "not run" panel beside the paper's
    for name in ("fig7.png", "fig4_none.png", "fig6_none.png"):
        assert "not run" in _texts(seen[name]), name
    assert "not run" not in _texts(seen["fig4.png"]) and "not run" not in _texts(seen["fig6.png"])
    with pytest.raises(TarotInputError, match="unknown exhibit"):
        paper.plot_ratio_exhibit(units, NUMBERS, tmp_path / "x.png", "fig9")


def test_claims_md_from_files(tmp_path):
    units = {
        "segmentation": {"kind": "segmentation", "target": None, "records": _segmentation(tmp_path)},
        "instruct-bbh": {"kind": "instruct", "target": "bbh", "records": _instruct(tmp_path)},
    }
    out = tmp_path / "claims.md"
    paper.write_claims({"toy": _lds(tmp_path)}, units, NUMBERS, out)
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    verdicts = [line.rstrip(" |").rsplit("|", 1)[1].strip().strip("*") for line in rows]
    assert set(verdicts) <= set(cl.VERDICTS)
    seg_20 = next(r for r in rows if "at 20%" in r and "| segmentation |" in r)
    assert seg_20.endswith("| **holds** |")  # 37.5 vs random 34.0
    transfer = next(r for r in rows if "transfers" in r and "instruct-bbh" in r)
    assert transfer.endswith("| **does not hold** |")  # qwen-tiny: TAROT 25.0 vs random 30.0
    hurts = next(r for r in rows if "hurts" in r)
    assert hurts.endswith("| **holds** |")  # full 40.5 < target only 42.0
    assert "| — (no motion task in this config) |" in text


def test_malformed_paper_numbers_are_refused():
    with pytest.raises(TarotInputError, match="no 'tab6' block"):
        paper.check_paper_numbers({k: v for k, v in NUMBERS.items() if k != "tab6"})
    bad = json.loads(json.dumps(NUMBERS))
    bad["tab6"]["lds"]["wfd"] = [0.1]
    with pytest.raises(TarotInputError, match="one value per ensemble size"):
        paper.check_paper_numbers(bad)
    with pytest.raises(TarotInputError, match="expected a mapping"):
        paper.check_paper_numbers([1, 2])


def test_every_number_in_the_paper_numbers_file_is_in_the_papers_text():
    """No invented number: every value of paper_numbers.yaml appears in the paper's text."""
    text_path = ROOT.parent / "shared" / "papers" / "tarot-2412.00420.txt"
    if not text_path.exists():
        pytest.skip("the paper's text is not beside the repository")
    text = text_path.read_text()

    def numbers(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key != "ensembles":
                    yield from numbers(value)
        elif isinstance(node, list):
            for value in node:
                yield from numbers(value)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            yield node

    for value in numbers(NUMBERS):
        forms = {
            f"{value:g}",
            f"{value:.1f}",
            f"{value:.2f}",
            f"{value:.3f}",
            f"{100 * value:g}%",
            f"{100 * value:.2g}%",
        }
        assert any(form in text for form in forms), value


@pytest.mark.parametrize("log_x", [False, True])
def test_otm_and_tarot_otm_stars_at_one_ratio_are_drawn_side_by_side_and_in_view(log_x):
    """Both OTM stars sit at the same chosen ratio; unshifted, the filled one hid the open one
    (seen on the paper-mini Figs. 5 and 7). Shifted by the same display distance on any axis,
    and kept inside the axes although a shifted artist is outside autoscaling (a first version
    drew them off the canvas, beyond the 50 % curve points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tarot_select.experiments.report.figures import OTM_DODGE_POINTS, draw_otm_star

    def centres(methods):
        fig, ax = plt.subplots(dpi=100)
        if log_x:
            ax.set_xscale("log")
        ax.plot([5.0, 20.0, 50.0], [25.0, 40.0, 43.0])  # the curves end at 50 %
        for method in methods:
            draw_otm_star(ax, method, methods, 65.6, 45.4, 3.0, markersize=14, label=method)
        fig.canvas.draw()
        lo, hi = ax.get_xlim()
        ylo, yhi = ax.get_ylim()
        assert lo < 65.6 < hi and ylo <= 45.4 - 3.0 and 45.4 + 3.0 <= yhi
        stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
        points = [line.get_transform().transform(line.get_xydata()[0]) for line in stars]
        frame = ax.get_window_extent()
        assert all(frame.x0 < px < frame.x1 and frame.y0 < py < frame.y1 for px, py in points)
        data = ax.transData.transform((65.6, 45.4))
        plt.close(fig)
        return points, data, fig.dpi

    (left, right), _, dpi = centres(["otm", "otm_weighted"])
    gap = (OTM_DODGE_POINTS["otm_weighted"] - OTM_DODGE_POINTS["otm"]) * dpi / 72.0
    assert right[0] - left[0] == pytest.approx(gap) and gap > 10
    assert right[1] == pytest.approx(left[1])
    (alone,), data, _ = centres(["otm"])  # one star: exactly at its ratio
    assert tuple(alone) == pytest.approx(tuple(data))
