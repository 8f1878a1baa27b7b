"""Where each stage reads and writes; dvc.yaml declares the same paths."""

from pathlib import Path

SOURCES = Path("data/sources.json")
PREPARED = Path("data/prepared")
MODELS = Path("models")
FOUNDATION = MODELS / "foundation"
INPAINT = FOUNDATION / "inpaint"
CLIPSEG = FOUNDATION / "clipseg"
ERM = MODELS / "erm"
BASELINES = MODELS / "baselines"
DFR = MODELS / "dfr"
PREDICTIONS = MODELS / "evaluate"
REPORTS = Path("reports")
FIGURES = REPORTS / "figures"
METRICS = REPORTS / "metrics.json"
