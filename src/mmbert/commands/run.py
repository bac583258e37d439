"""mmbert run CONFIG [--quick] [--out RUN_DIR] [--set key=value ...]"""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("config", help="recipe YAML (a training config with a `recipe:` section), e.g. configs/miniature.yaml")
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>[-quick])")
    p.add_argument("--quick", action="store_true", help="apply the config's `recipe.quick` overrides (a smoke run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training config value, e.g. phases.0.steps=50 (repeatable)")


def run(args) -> int:
    from mmbert.recipe import run_recipe

    run_recipe(args.config, args.out, quick=args.quick, overrides=args.overrides)
    return 0
