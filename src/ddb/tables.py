"""Markdown tables, shared by the report stage (reports/results.md) and the paper-table and
ablation commands (reports/paper_table.md, reports/ablations.md): method and dataset names,
cells in % with one decimal, and the published figures (published.yaml, with their sources)
that the paper table sets beside ours."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from ddb.methods import LABELS

# the rows in the order of the DDB paper's Table 1, then ours; a method not listed follows them
PAPER_ORDER = (
    "erm", "jtt", "dfr", "dac", "lisa", "disc", "group_dro", "group_balanced", "ddb_no_prune", "ddb"
)  # fmt: skip
_LABELLED = {
    "erm": ("ERM", "no", "yes (model selection)"),
    **LABELS,
    "ddb_no_prune": ("DDB without pruning", "no", "yes (model selection)"),
    "ddb": ("DDB", "no", "yes (model selection)"),
}
# method -> (display name, uses train group labels, uses val group labels), in PAPER_ORDER
METHODS = {
    m: _LABELLED[m]
    for m in sorted(
        _LABELLED, key=lambda m: PAPER_ORDER.index(m) if m in PAPER_ORDER else len(PAPER_ORDER)
    )
}

DATASET_TITLES = {
    "embedded": "embedded benchmark",
    "waterbirds": "Waterbirds",
    "celeba": "CelebA",
    "metashift": "MetaShift",
}

NONE = "–"  # a cell with no figure: not run, not published


def method_name(method: str) -> str:
    return METHODS.get(method, (method,))[0]


def dataset_title(dataset: str) -> str:
    return DATASET_TITLES.get(dataset, dataset)


def interval_cell(value: float, interval: list[float]) -> str:
    """A fraction in % with its interval: "71.2 [66.2, 76.2]"."""
    return f"{100 * value:.1f} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def mean_std(values: list[float]) -> str:
    """Values in % as "mean ± std" (sample std, ddof 1; 0.0 for one value)."""
    if not values:
        return NONE
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.1f} ± {std:.1f}"


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join([row(header), "|" + "---|" * len(header), *(row(r) for r in rows)])


# ---- published figures -------------------------------------------------------------------

PUBLISHED = Path(str(resources.files("ddb") / "published.yaml"))  # ships in the package


@dataclass(frozen=True)
class Published:
    """One method's published test WGA (%) per dataset profile, and where it was published."""

    source: str
    wga: dict[str, float]  # the published datasets only


def published(path: Path = PUBLISHED) -> dict[str, Published]:
    """method -> its published figures, read from `path` (src/ddb/published.yaml)."""
    entries = yaml.safe_load(path.read_text()) or {}
    found = {}
    for method, entry in entries.items():
        wga = (entry or {}).get("wga")
        source = (entry or {}).get("source")
        if not isinstance(wga, dict) or not isinstance(source, str):
            raise ValueError(
                f"{path}: '{method}' needs 'source' (a citation) and 'wga' (dataset: figure "
                "in %, or null); see the entries above it"
            )
        bad = {d: v for d, v in wga.items() if v is not None and not isinstance(v, int | float)}
        if bad:
            raise ValueError(f"{path}: '{method}.wga' has non-numbers {bad}; write % or null")
        found[method] = Published(source, {d: float(v) for d, v in wga.items() if v is not None})
    return found
