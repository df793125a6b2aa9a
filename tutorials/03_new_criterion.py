"""Tutorial 3: a new criterion is one small file.

A criterion subclasses ``Criterion``, names the statistics it needs from each consumer layer, and
scores every unit of a group (higher = keep). ``register`` makes it available to recipes by name.
In the package it would live in ``fxprune/passes/criteria/<name>.py`` and be picked up automatically.

    .venv/bin/python tutorials/03_new_criterion.py
"""
import torch

from fxprune.models.tiny import tiny_model
from fxprune.passes.consumers import consumers, per_unit
from fxprune.passes.criteria import Criterion, Stat, register
from fxprune.pipeline import prune_model
from fxprune.report import find_pass


@register
class MeanActivation(Criterion):
    """|E[x_j]| * ||W[:, j]||: units whose mean contribution is small go first."""

    name = "mean_activation"
    needs = frozenset({Stat.INPUT_SUM})

    def score(self, group, model, stats):
        total = torch.zeros(group.units, dtype=torch.float64)
        for c in consumers(group):
            mean = stats[c.module].mean.double().abs()
            w = c.columns(model).detach().double().norm(dim=0)
            total += per_unit(mean * w, c.member, group.units)
        return total


def main(argv=None):
    model = tiny_model("llama")
    windows = torch.randint(5, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    recipe = {"steps": [{"structured": {"criterion": "mean_activation", "reconstruction": "flap_bias",
                                        "target": 0.25}}]}
    out = prune_model(model, recipe, windows)
    score = find_pass(out.report, "score")
    print(f"criterion {score['criterion']}: {out.report['params_before']:,} -> "
          f"{out.report['params_after']:,} parameters")
    assert score["criterion"] == "mean_activation"
    return out


if __name__ == "__main__":
    main()
