"""First contact: what imports what, what the package declares, and what ``xai-lightning --help`` says."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ALGORITHMS = [
    "attribution",
    "concepts",
    "dissection",
    "dynamics",
    "evaluation",
    "explainer",
    "robustness",
    "uncertainty",
    "core",
    "logging",
]


def run_python(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("package", ALGORITHMS)
def test_algorithm_packages_do_not_load_lightning(package):
    loaded = json.loads(
        run_python(
            f"import json, sys; import xai_lightning.{package}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pytorch_lightning', 'lightning', 'lightning_fabric', 'wandb', 'tensorboard', 'skimage'))))"
        )
    )
    assert loaded == [], f"import xai_lightning.{package} loaded {loaded[:5]}"


def test_the_root_is_lazy_and_exports_what_it_did():
    out = json.loads(
        run_python(
            "import json, sys; import xai_lightning as x; before = 'torch' in sys.modules; "
            "from xai_lightning import grad_cam, SmallCNN, ConceptWorld; "
            "pl_early = 'pytorch_lightning' in sys.modules; "
            "from xai_lightning import GradCAMCallback; "
            "print(json.dumps([before, pl_early, 'pytorch_lightning' in sys.modules, 'xai_lightning.concepts.tcav' in "
            "sys.modules, sorted(x.__all__), all(hasattr(x, n) for n in x.__all__)]))"
        )
    )
    torch_at_import, lightning_for_algorithms, lightning_for_callback, tcav_loaded, exported, resolvable = out
    assert not torch_at_import and not lightning_for_algorithms and lightning_for_callback and not tcav_loaded
    assert resolvable
    assert {"GradCAMCallback", "grad_cam", "ConceptWorldDataModule", "PGD", "pgd", "observe"} <= set(exported)
    from xai_lightning import callbacks

    callback_classes = {name for name in callbacks.__all__ if name.endswith("Callback")}
    assert callback_classes <= set(exported), sorted(callback_classes - set(exported))


# ---------------------------------------------------------------------------------------------- dependencies
#: import name -> distribution name, where they differ
DISTRIBUTIONS = {
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "yaml": "pyyaml",
    "pytorch_lightning": "pytorch-lightning",
    "jsonargparse": "jsonargparse",
}


def _requirement_name(requirement: str) -> str:
    name = requirement.split(";")[0]
    for separator in ("[", ">", "<", "=", "!", "~", " "):
        name = name.split(separator)[0]
    return name.strip().lower()


def _third_party_imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / "xai_lightning").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "xai_lightning":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_import_of_the_package_is_a_declared_dependency():
    declared = {_requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = {
        extra: {_requirement_name(r) for r in requirements}
        for extra, requirements in PYPROJECT["project"]["optional-dependencies"].items()
    }
    for module, files in _third_party_imports().items():
        distribution = DISTRIBUTIONS.get(module, module).lower()
        if distribution in declared:
            continue
        # An optional dependency must be in an extra, and imported only through xai_lightning.extras.require.
        assert any(distribution in names for names in extras.values()), f"{distribution} ({sorted(files)}) undeclared"
    for requirement in PYPROJECT["project"]["dependencies"]:  # and nothing declared goes unused
        name = _requirement_name(requirement)
        modules = [m for m, d in DISTRIBUTIONS.items() if d == name] or [name.replace("-", "_")]
        assert any(m in _third_party_imports() for m in modules) or name == "jsonargparse", f"{name} is unused"


def test_optional_dependencies_name_their_extra(monkeypatch):
    from xai_lightning.extras import require

    # As if scikit-image were not installed, even when a test module collected earlier (Quantus
    # imports it) has loaded it already: a module set to None in sys.modules fails to import.
    for name in [name for name in sys.modules if name.startswith("skimage.")] + ["skimage", "skimage.segmentation"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r'pip install "xai-lightning\[superpixels\]"'):
        require("skimage.segmentation", "LIME's superpixels")
    import torch

    from xai_lightning.attribution.superpixels import segment_image

    with pytest.raises(ImportError, match=r"segmentation='slic'.* needs scikit-image.*xai-lightning\[superpixels\]"):
        segment_image(torch.rand(3, 8, 8), "slic")


def test_metadata_has_one_source():
    assert not (ROOT / "setup.cfg").exists() and not (ROOT / "setup.py").exists()
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and "Apache License" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "xai_lightning" / "py.typed").exists()
    assert project["scripts"]["xai-lightning"] == "xai_lightning.cli:main"
    assert any(r.startswith("wandb>=0.28") for r in project["dependencies"])
    assert {"superpixels", "tensorboard"} <= set(project["optional-dependencies"])


# ---------------------------------------------------------------------------------------------- the CLI
def test_help_lists_the_commands_and_the_shipped_configs_without_loading_lightning():
    out = run_python(
        "import sys; from xai_lightning.cli import main; main(['--help']); "
        "print('LOADED' if 'pytorch_lightning' in sys.modules else 'LIGHT')"
    )
    for command in ("fit", "validate", "test", "predict", "configs"):
        assert f"\n  {command} " in out
    assert "concept_world_gradcam" in out and "concept_world_attribution" in out
    assert "trusted code" in out and out.strip().endswith("LIGHT")


def test_a_subcommand_registers_in_one_line(capsys):
    from xai_lightning import cli

    try:
        cli.register_subcommand("echo", "print the arguments", lambda args: print(*args) or 3)
        assert cli.main(["echo", "a", "b"]) == 3
        assert capsys.readouterr().out == "a b\n"
        assert "  echo " in cli.help_text()
    finally:
        cli.SUBCOMMANDS.pop("echo", None)
    assert cli.main(["no-such-command"]) == 2


def test_shipped_configs_resolve_by_name():
    from xai_lightning.cli import resolve_config, shipped_configs

    configs = shipped_configs()
    assert set(configs) >= {"concept_world_gradcam", "concept_world_attribution"}
    assert resolve_config(["fit", "--config", "concept_world_gradcam"]) == [
        "fit",
        "--config",
        str(configs["concept_world_gradcam"]),
    ]
    assert resolve_config(["fit", "--config=my.yaml"]) == ["fit", "--config=my.yaml"]


def test_the_library_never_switches_the_matplotlib_backend_or_uses_pyplot():
    """``matplotlib.use`` (and pyplot's global state) breaks a notebook's inline backend: not in the
    package, nor in the experiments and notebooks that show how to use it."""
    offenders = set()
    sources = [*(ROOT / "xai_lightning").rglob("*.py"), *(ROOT / "experiments").rglob("*.py")]
    sources += (ROOT / "notebooks").rglob("*.ipynb")
    for path in sources:
        text = path.read_text()
        if "matplotlib.use(" in text or "import matplotlib.pyplot" in text or "from matplotlib import pyplot" in text:
            offenders.add(str(path.relative_to(ROOT)))
    assert offenders == set(), sorted(offenders)
