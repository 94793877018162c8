"""The layers: the method library knows no task, experiment or Snakemake; tasks know no
experiment; workflow scripts only unpack ``snakemake.*`` and call the experiment layer;
the Snakemake process plans a run without importing torch."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "tarot_select"
SCRIPTS = ROOT / "workflow" / "scripts"


def _imported_modules(path: Path, src: Path = ROOT / "src") -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    parts = list(path.relative_to(src).with_suffix("").parts)
    package = parts[:-1]  # the package a relative import starts from (for __init__ too)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names |= {f"{mod}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return names


def _layer(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package).parts
    if rel[0] in ("tasks", "experiments"):
        return rel[0]
    return "method"


FORBIDDEN = {
    "method": ("tarot_select.tasks", "tarot_select.experiments", "snakemake"),
    "tasks": ("tarot_select.experiments", "snakemake"),
    "experiments": ("snakemake",),
}


def _violations(path: Path, src: Path = ROOT / "src") -> list[str]:
    bad = set()
    layer = _layer(path, src / "tarot_select")
    for name in _imported_modules(path, src):
        for prefix in FORBIDDEN[layer]:
            if name == prefix or name.startswith(prefix + "."):
                bad.add(f"{path.relative_to(src)} ({layer}) imports {prefix}")
    return sorted(bad)


def test_no_module_imports_a_layer_above_it():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 30
    bad = [v for path in modules for v in _violations(path)]
    assert not bad, "\n".join(bad)


def test_the_import_check_catches_a_forbidden_import(tmp_path):
    """The check above can fail: a library module that imports a task is reported."""
    fake = tmp_path / "tarot_select" / "probe.py"
    fake.parent.mkdir()
    fake.write_text("from .tasks import get_task\nfrom .experiments.stages import stage\n")
    found = _violations(fake, tmp_path)
    assert [f.rsplit(" ", 1)[1] for f in found] == ["tarot_select.experiments", "tarot_select.tasks"]


ALLOWED_IN_SCRIPTS = (ast.Expr, ast.Assign, ast.With, ast.ImportFrom, ast.Import)


def test_workflow_scripts_only_unpack_snakemake_and_call_the_experiment_layer():
    scripts = sorted(SCRIPTS.glob("*.py"))
    assert len(scripts) >= 15
    for script in scripts:
        tree = ast.parse(script.read_text())
        for node in ast.walk(tree):
            assert not isinstance(
                node,
                (ast.FunctionDef, ast.ClassDef, ast.For, ast.While, ast.If, ast.Try, ast.ListComp, ast.DictComp),
            ), f"{script.name}: logic belongs in tarot_select.experiments (line {node.lineno})"
        for node in tree.body:
            assert isinstance(node, ALLOWED_IN_SCRIPTS), f"{script.name}: line {node.lineno}"
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").startswith("tarot_select.experiments"), f"{script.name}: {node.module}"


def test_planning_a_run_imports_no_torch():
    code = textwrap.dedent(
        f"""
        import sys, yaml
        from tarot_select.experiments import plan
        from tarot_select.experiments.config import check_config
        from tarot_select.experiments.naming import selection_name
        from tarot_select.tasks import task_kinds
        config = yaml.safe_load(open({str(ROOT / "tests" / "data" / "tiny.yaml")!r}))
        config.setdefault("lds", {{}})["enabled"] = True
        check_config(config)
        assert len(task_kinds()) >= 3
        plan.units(config); plan.stage_params(config, "digits", "proxy")
        heavy = sorted(m for m in ("torch", "matplotlib", "sklearn", "pandas") if m in sys.modules)
        print(heavy)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]", res.stdout


@pytest.mark.parametrize("module", ["tarot_select", "tarot_select.tasks", "tarot_select.experiments"])
def test_package_imports_are_light(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stderr[-2000:]
