"""The whole recipe in one call: train all phases and decay variants, merge, evaluate, report."""

from mmbert.recipe.run import Recipe, load_recipe, run_recipe

__all__ = ["Recipe", "load_recipe", "run_recipe"]
