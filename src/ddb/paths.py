"""Where each stage reads and writes; dvc.yaml declares the same paths."""

from pathlib import Path

SOURCES = Path("data/sources.json")
PREPARED = Path("data/prepared")
# md5 of every file of data/prepared: what foundation_report lists instead of the folder, so
# that a no-op `dvc repro` walks the 11k files twice (prepare's out, index's dep), not thrice
PREPARED_MD5 = Path("data/prepared.md5")
MODELS = Path("models")
INDEX = MODELS / "index"  # the dataset's table, with a hash of every image it lists
INDEX_TABLE = INDEX / "table.csv"
INDEX_SUMMARY = INDEX / "summary.json"
FOUNDATION = MODELS / "foundation"
INPAINT = FOUNDATION / "inpaint"
CLIPSEG = FOUNDATION / "clipseg"
BACKBONE = MODELS / "backbone"  # the pretrained ResNet (classifier.weights names its file)
BACKBONE_REPORT = Path("reports/backbone.md")
# foundation_report's fixed classifier, trained on data/prepared only (never data.root)
JUDGE = MODELS / "judge"
# The frozen one-off stages' outputs, committed to git like downloaded weights: a copy of the
# project that runs the pipeline (tests, benchmarks) needs them, since they never re-run.
COMMITTED_OUTPUTS = (FOUNDATION, BACKBONE, BACKBONE_REPORT, JUDGE)
ERM = MODELS / "erm"
BASELINES = MODELS / "baselines"
DFR = MODELS / "dfr"
DAC = MODELS / "dac"  # DaC's retrained head, and the adaptive masks it trained with
DISC = MODELS / "disc"
DISC_CONCEPTS = Path("data/disc_concepts")  # the embedded default's DISC concept bank
SELECT = MODELS / "select"
SEGMENT = MODELS / "segment"
INVERT = MODELS / "invert"
GENERATE = MODELS / "generate"
SCORE = MODELS / "score"
PRUNE = MODELS / "prune"
DDB = MODELS / "ddb"  # retrain on the kept samples
DDB_NO_PRUNE = MODELS / "ddb_no_prune"  # retrain on every generated sample (the ablation)
PREDICTIONS = MODELS / "evaluate"
REPORTS = Path("reports")
FIGURES = REPORTS / "figures"
METRICS = REPORTS / "metrics.json"
DISCUSSION = REPORTS / "discussion.md"  # written by hand; report includes it in results.md


def model_dir(method: str) -> Path:
    """Where a method's trained classifier (model.pt, history.csv) lives."""
    named = {
        "erm": ERM,
        "dfr": DFR,
        "dac": DAC,
        "disc": DISC,
        "ddb": DDB,
        "ddb_no_prune": DDB_NO_PRUNE,
    }
    return named.get(method, BASELINES / method)
