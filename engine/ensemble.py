"""Top-K ensembles of tuned models, calibrated and thresholded on val, saved as one artifact.

    raybalance run jobs/configs/demo.yaml                  # the pipeline builds RUN_DIR/ensemble
    members = select_members(tune_table, top_k=3, metric="val_macro_f1")
    scores = score_splits(refs, {"val": val_dir, "test": test_dir}, spec)   # Ray Data actor pool
    fit = fit_combination(scores["val"].y, [scores["val"].proba[m.name] for m in refs], ...)
    write_artifact(spec, refs, fit, thresholds, "runs/x/ensemble")
    art = load_artifact("runs/x/ensemble")                 # hashes checked, pickles refused

Candidates are the ``top_k`` trials of the search ranked by ``tune.metric`` (each trial's best
epoch), whatever their model kind: an MLP head over frozen embeddings, a lexical n-gram model
and a fine-tuned transformer mix freely. ``ensemble.selection: greedy`` keeps the best and adds,
while one helps on val, the candidate that improves the val metric of the mean most
(``select_greedy``); ``top_k`` keeps them all. Each member's class probabilities on val and
test come from one Ray Data pass per split through an actor pool (``Scorer``: every member
loaded once per actor; one actor per GPU when the cluster has GPUs, else half the CPUs). The
ensemble's probability: with ``ensemble.temperature``, each member is first scaled by its own
temperature (``p ∝ exp(log p / T)``, T fitted on val NLL) so that members of different kinds
speak on one scale; then the weighted mean (``ensemble.weights``: ``equal``, or ``fitted`` —
simplex weights minimizing val NLL), scaled by the ensemble's own temperature. The decision
thresholds (``engine.thresholds``) are fitted on the calibrated val probabilities. Nothing here
looks at test.

The artifact (``RUN_DIR/ensemble/``)::

    manifest.json     format, versions, columns, members (kind, inputs, weight, source),
                      temperature, and the sha256 of every other file
    label_map.json    labels <-> class indices
    thresholds.json   the fitted decision rule
    members/<name>/   each member as saved by ``engine.models.save_model``
    encoder/          the frozen text encoder, when a member reads embeddings of the text

It holds only safetensors, JSON and tokenizer vocabulary text; ``load_artifact`` refuses a file
of any other kind, a file the manifest does not list, and a hash that does not match — before
anything is loaded (a planted pickle is never read). The folder is written under a temporary
name and renamed into place when complete.

The pieces live by concern: ``engine.scoring`` (members, the scoring actor pool),
``engine.combining`` (temperatures, weights, selection) and ``engine.artifact`` (writing and
verifying the folder); this module gathers them under one name.
"""

from engine.artifact import (  # noqa: F401
    ALLOWED_SUFFIXES,
    FORMAT,
    MANIFEST,
    Artifact,
    load_artifact,
    sha256_file,
    verify_artifact,
    versions,
    write_artifact,
)
from engine.combining import (  # noqa: F401
    CRITERIA,
    PROBA_FLOOR,
    T_BOUNDS,
    Combination,
    calibrated_nll,
    combine,
    decision_score,
    fit_combination,
    fit_temperature,
    fit_weights,
    member_temperatures,
    nll,
    select_greedy,
    temperature_scale,
)
from engine.scoring import (  # noqa: F401
    ModelRef,
    Scorer,
    SplitScores,
    map_scorer,
    model_kind,
    model_ref,
    resolve_scoring_columns,
    score_splits,
    scoring_columns,
    scoring_pool,
    select_members,
)
