"""pyproject.toml's dependencies cover every third-party package that src/ imports."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# import name -> distribution, where they differ
DISTRIBUTIONS = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "hydra": "hydra-core",
    "huggingface_hub": "huggingface-hub",
    "umap": "umap-learn",
}


def imported_top_levels(root: Path) -> set[str]:
    """Top-level names of every absolute import under `root` (lazy ones inside functions
    too), minus the standard library and ddb itself."""
    names = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"ddb", "__future__"}


def declared(pyproject: Path) -> dict[str, str]:
    """Normalised distribution name -> its requirement string, extras included (an optional
    import such as DISC's UMAP is declared as an extra)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {}).values()
    requirements = [*project["dependencies"], *(r for extra in extras for r in extra)]
    return {re.split(r"[<>=!~\[; ]", r)[0].lower().replace("_", "-"): r for r in requirements}


def test_every_imported_package_is_a_declared_dependency():
    imported = imported_top_levels(REPO / "src")
    assert {"torch", "diffusers", "transformers", "sklearn", "PIL"} <= imported  # the walk works
    needed = {DISTRIBUTIONS.get(name, name).lower().replace("_", "-") for name in imported}
    missing = needed - set(declared(REPO / "pyproject.toml"))
    assert not missing, f"imported under src/ but not in pyproject.toml dependencies: {missing}"


def test_the_lower_bounds_the_code_relies_on():
    requirements = declared(REPO / "pyproject.toml")
    assert requirements["scikit-learn"].endswith(">=1.8")  # L1 through l1_ratio
    assert requirements["diffusers"].endswith(">=0.40")  # from_pretrained(dtype=...)
    assert requirements["transformers"].endswith(">=5.0")
