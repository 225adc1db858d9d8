"""Ablation: each slice's encoder input rescaled to the pooled within-slice spread before joint training.

    .venv/bin/python benchmarks/ablation_input_scale.py {match,plain} [suite.py options]

``match`` rescales, column by column within each slice, the input ``[Y, ÂY, ..., Â^k Y]`` that
:class:`~sd_inspire.model.InspireModel` prepares (what ``tl.map_query`` does for a query against its reference);
``plain`` runs the model as it is. Everything else is ``benchmarks/suite.py`` with the options given, e.g.
``--datasets DLPFC Barista --seeds 0 1 --threads 1 --name ablation_input_scale_match``. Results:
``benchmarks/results/ablations.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import sd_inspire.model._model as model_module
    from sd_inspire.model._features import match_input_scale, within_slice_sd

    if sys.argv[1:2] not in (["match"], ["plain"]):
        raise SystemExit(__doc__)
    if sys.argv[1] == "match":
        prepare = model_module.prepare

        def matched(*args, **kwargs):
            data = prepare(*args, **kwargs)
            n = len(data.slice_names)
            match_input_scale(data.features, data.slices, n, within_slice_sd(data.features, data.slices, n))
            return data

        model_module.prepare = matched
    import suite

    suite.main(sys.argv[2:])


if __name__ == "__main__":
    main()
