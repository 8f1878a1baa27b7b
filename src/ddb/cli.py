"""`ddb <stage>` / `python -m ddb <stage>`: thin entry points that DVC calls."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from ddb.dvcfile import read_stages

# stage -> (module in ddb.stages, function) where it is not (the stage's name, run)
ENTRY_POINTS = {"retrain_no_prune": ("retrain", "run_no_prune")}

# What `ddb --help` says of each stage; the stages themselves are dvc.yaml's (ddb.dvcfile).
STAGE_HELP = {
    "prepare": "build the embedded benchmark into data/prepared",
    "index": "read data.root's table once, hash every image (models/index)",
    "foundation": "train the small offline inpainting diffusion (models/foundation/inpaint)",
    "foundation_segmenter": "train the small offline CLIPSeg (models/foundation/clipseg)",
    "backbone": "pretrain the offline ResNet on the corpus's object task (models/backbone)",
    "judge": "train foundation_report's fixed classifier on data/prepared (models/judge)",
    "erm": "train the ERM classifier (models/erm)",
    "baselines": "train the baselines listed in baselines.methods (models/baselines)",
    "dfr": "retrain the ERM model's last layer on val (models/dfr)",
    "dac": "DaC: retrain the ERM model's last layer on masked, composed images (models/dac)",
    "disc_concepts": "build the embedded default's DISC concept bank (data/disc_concepts)",
    "disc": "DISC: train against the concepts ERM is sensitive to (models/disc)",
    "select": "DDB: sources and inversion images from ERM's per-sample losses (models/select)",
    "segment": "DDB: segmenter masks of the causal component (models/segment)",
    "invert": "DDB: textual inversion, one token per class (models/invert)",
    "generate": "DDB: repaint sources as the other classes, resumable (models/generate)",
    "score": "DDB: ERM probabilities and attributions of each sample (models/score)",
    "prune": "DDB: keep the samples that pass the thresholds (models/prune)",
    "retrain": "DDB: fine-tune ERM on original + kept samples (models/ddb)",
    "retrain_no_prune": "DDB ablation: fine-tune on every generated sample (models/ddb_no_prune)",
    "evaluate": "group metrics of every model on val and test (reports/metrics.json)",
    "report": "results table and figures (reports/results.md, reports/figures)",
    "foundation_report": "measure the foundation models (reports/foundation.md)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ddb", description=__doc__)
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: params.yaml)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name in read_stages():
        commands.add_parser(name, help=STAGE_HELP.get(name, f"the {name} stage of dvc.yaml"))
    commands.add_parser(
        "sources", help="record the benchmark's source photographs (data/sources.json)"
    )
    commands.add_parser("check", help="validate params.yaml and the dataset, then exit")
    params_command = commands.add_parser(
        "params", help="compose conf/ into params.yaml (what `dvc exp run -S` does)"
    )
    params_command.add_argument(
        "--check", action="store_true", help="only say whether params.yaml is conf/'s composition"
    )
    params_command.add_argument(
        "--describe",
        action="store_true",
        help="print each key (or only the KEYs given) with its composed value, its comment in "
        "conf/config.yaml and the dvc.yaml stages that list it; writes nothing",
    )
    params_command.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides, e.g. dataset=celeba prune.threshold=0.3; with --describe also "
        "keys or sections to describe, e.g. prune data.celeba",
    )
    commands.add_parser(
        "quickstart",
        help="run the whole method on the tiny profile (conf/debug/tiny.yaml) in .quickstart/ "
        "and print its short results table",
    )
    for name, help_text in (
        ("paper-table", "run every method x dataset x seed as DVC experiments; write the table"),
        ("ablations", "run the controls as DVC experiments; write reports/ablations.md"),
    ):
        command = commands.add_parser(name, help=help_text)
        when = command.add_mutually_exclusive_group()
        when.add_argument(
            "--collect-only",
            action="store_true",
            help="run nothing: rebuild the report from the experiments DVC already has",
        )
        when.add_argument(
            "--queue-only",
            action="store_true",
            help="queue the experiments and stop: start the workers yourself (`dvc queue "
            "start`, one GPU each: docs/scaling.md), then run again with --collect-only",
        )
    commands.choices["ablations"].add_argument(
        "--only", nargs="+", metavar="NAME", help="run only these controls (default: all)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from ddb.config import ConfigError, load_config
    from ddb.data.dataset import DataError
    from ddb.data.embedded import SourcesError
    from ddb.utils import StageError

    try:
        if args.command == "sources":
            return record_sources()
        if args.command == "params" and args.describe:
            return describe_params(args.overrides)
        if args.command == "params":
            return write_params(args.params, args.overrides, args.check)
        if args.command == "quickstart":
            from ddb.quickstart import quickstart

            print(quickstart(Path.cwd()))
            return 0
        config = load_config(args.params)
        if args.command == "check":
            from ddb.data.dataset import load_dataset

            load_dataset(config.data, check=True)
            print("params and data are valid")
            return 0
        if args.command == "paper-table":
            from ddb.experiments import paper_table

            print(paper_table(config, args.collect_only, args.queue_only))
            return 0
        if args.command == "ablations":
            from ddb.experiments import ablations

            print(ablations(config, args.collect_only, args.only, args.queue_only))
            return 0
        from ddb.params_log import recording

        module, function = ENTRY_POINTS.get(args.command, (args.command, "run"))
        stage = getattr(importlib.import_module(f"ddb.stages.{module}"), function)
        stage(recording(config, args.command))  # as is unless DDB_PARAMS_LOG is set (tests)
    except (ConfigError, DataError, SourcesError, StageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def write_params(path: str, overrides: list[str], check: bool) -> int:
    """Compose conf/ into params.yaml (for a plain `dvc repro` after editing conf/), or with
    --check report whether params.yaml holds what conf/ composes to (CI runs it)."""
    from pathlib import Path

    import yaml

    from ddb.config import Config, ConfigError, compose_params, from_dict, params_text
    from ddb.utils import write_text

    params = compose_params("conf", overrides)
    from_dict(Config, params, prefix="").validate()  # known keys, valid values
    if check:
        current = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else None
        if current != params:
            raise ConfigError(
                f"{path}: not the composition of conf/ (edited by hand, or conf/ changed): "
                "run `ddb params` to regenerate it, or move the edit into conf/"
            )
        print(f"{path} is conf/'s composition")
        return 0
    write_text(path, params_text(params))
    print(f"wrote {path} from conf/ ({' '.join(overrides) or 'defaults'})")
    return 0


def describe_params(arguments: list[str]) -> int:
    """`ddb params --describe [KEY ...] [override ...]`: the composed params, explained."""
    from ddb.config import ConfigError, compose_params
    from ddb.describe import describe, key_comments

    overrides = [a for a in arguments if "=" in a]
    selected = [a for a in arguments if "=" not in a]
    params = compose_params("conf", overrides)
    comments = key_comments(Path("conf/config.yaml").read_text())
    text = describe(params, comments, read_stages(), selected)
    if not text:
        raise ConfigError(
            f"ddb params --describe: no params key {' or '.join(selected)} in conf/ "
            "(`ddb params --describe` lists them all)"
        )
    print(text)
    return 0


def record_sources() -> int:
    """Write data/sources.json only when its content changes (then prepare re-runs)."""
    from ddb import paths
    from ddb.data.embedded import SourcesError, describe_sources
    from ddb.utils import write_text

    try:
        text = json.dumps(describe_sources(), indent=2) + "\n"
    except SourcesError as err:
        # Not fatal for set-up: a user may bring their own data through data.root.
        print(f"warning: {err}", file=sys.stderr)
        return 0
    if not paths.SOURCES.is_file() or paths.SOURCES.read_text() != text:
        write_text(paths.SOURCES, text)
        print(f"recorded the benchmark's source photographs in {paths.SOURCES}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
