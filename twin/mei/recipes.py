"""Named MEI recipes (MEIConfig presets) and custom recipes from a TOML ``[mei]`` table.

- walker2019: Walker et al. 2019, the inception loop (the MEIConfig defaults).
- sinz_ga: Sinz-lab gradient ascent (mei library, EGG baseline): SGD lr 1, gradient blur sigma 1,
  fixed L2 norm, pixel range clipped, 1000 steps.
- lucid: lucid/lucent feature visualization: Fourier parametrization, Adam lr 0.05, 512 steps,
  random jitter, scale and rotation each step (lucid's transform robustness; lucid rotates by up
  to 10 degrees).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from twin.config import MEIConfig, read_toml, section_from_dict
from twin.errors import ConfigError

RECIPES: dict[str, MEIConfig] = {
    "walker2019": MEIConfig(recipe="walker2019"),
    "sinz_ga": MEIConfig(
        recipe="sinz_ga",
        optimizer="sgd",
        learning_rate=1.0,
        final_learning_rate=1.0,
        schedule="constant",
        normalize_gradient=False,
        precondition=0.0,
        blur_target="gradient",
        blur_sigma=1.0,
        final_blur_sigma=1.0,
        norm=25.0,
        seeds=10,
    ),
    "lucid": MEIConfig(
        recipe="lucid",
        steps=512,
        optimizer="adam",
        learning_rate=0.05,
        final_learning_rate=0.05,
        schedule="constant",
        normalize_gradient=False,
        parametrization="fourier",
        precondition=0.0,
        blur_target="none",
        jitter=2,
        scale_jitter=0.1,
        rotate=10.0,
    ),
}


def recipe_config(
    name: str | None,
    config_path: str | Path | None = None,
    seeds: int | None = None,
    run_mei: MEIConfig | None = None,
    run_source: str = "run config.toml",
) -> tuple[MEIConfig, list[str]]:
    """(the MEI config, the sources that set it, e.g. ["recipe walker2019", "--seeds 3"]).

    The recipe to start from: ``name`` (--recipe), else the preset that ``config_path``'s [mei]
    table names as its recipe, else the run's own recipe, else walker2019. --recipe and a
    different preset named in the file are refused (the file's recipe would silently lose), while
    a file recipe that is not a preset names a custom recipe built on that start.
    Lowest to highest: the starting preset; the fields of the run's [mei] table ``run_mei`` (read
    from ``run_source``) that differ from the MEIConfig defaults, applied only when the start is
    the run's recipe; the fields of ``config_path``'s [mei] table; ``seeds``. A name that is
    neither a preset nor the run's recipe starts from the MEIConfig defaults and needs a config file.
    """
    table = None
    if config_path is not None:
        path = Path(config_path)
        table = read_toml(path).get("mei")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: no [mei] table; add one with the recipe fields to change")
        checked = section_from_dict(MEIConfig, table, str(path))
        if "recipe" in table and checked.recipe in RECIPES:
            if name is not None and name != checked.recipe:
                raise ConfigError(
                    f"--recipe {name} and {path}: [mei].recipe = {checked.recipe!r} name different"
                    " recipes; drop --recipe or the file's recipe line"
                )
            name = checked.recipe
    own = run_mei is not None and name in (None, run_mei.recipe)
    if name is None:
        name = run_mei.recipe if run_mei is not None else MEIConfig().recipe
    if name not in RECIPES and not own and config_path is None:
        raise ConfigError(
            f"--recipe {name!r}: unknown recipe; use {', '.join(RECIPES)} or pass --config FILE"
            " with a [mei] table"
        )
    config = RECIPES.get(name, MEIConfig(recipe=name))
    sources = [f"recipe {name}"]
    if run_mei is not None and not own:
        sources.append(f"{run_source} [mei] skipped (the run's recipe is {run_mei.recipe})")
    if own:
        defaults = MEIConfig()
        changed = {
            field.name: getattr(run_mei, field.name)
            for field in dataclasses.fields(MEIConfig)
            if field.name != "recipe" and getattr(run_mei, field.name) != getattr(defaults, field.name)
        }
        if changed:
            config = dataclasses.replace(config, **changed)
            sources.append(f"{run_source} [mei]")
    if table is not None:
        config = dataclasses.replace(config, **{key: getattr(checked, key) for key in table})
        sources.append(f"--config {path}")
    if seeds is not None:
        config = dataclasses.replace(config, seeds=seeds)
        sources.append(f"--seeds {seeds}")
    return config, sources
