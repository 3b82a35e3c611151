"""The score-source and similarity-estimator registries: one table each, read torch-free, typed errors."""

from __future__ import annotations

import pytest

from edge_smsp.core.errors import PruneError
from edge_smsp.criteria import (
    SCORE_SOURCES,
    SCRATCH,
    Criterion,
    ScoreInputs,
    ScoreSource,
    criterion,
    criterion_names,
    method_names,
    needs_pool,
    pool_source_names,
    score_source,
)
from edge_smsp.transfer.estimators import SIMILARITY_ESTIMATORS, similarity_estimator


def test_every_registered_source_loads_under_its_own_name() -> None:
    for name in SCORE_SOURCES:
        source = score_source(name)
        assert isinstance(source, ScoreSource) and source.name == name
    assert method_names() == (*SCORE_SOURCES, SCRATCH)
    pool_sources = set(pool_source_names())
    assert {"smsp", "smsp-random"} <= pool_sources and not pool_sources & {"random", "magnitude", "taylor"}
    assert not needs_pool(SCRATCH) and not needs_pool("taylor") and needs_pool("smsp")
    # What `prune` offers (no data needed) and what iterative pruning re-scores with between rounds.
    assert {"random", "magnitude"} <= set(criterion_names(batches=False)) and "taylor" not in criterion_names(
        batches=False
    )
    assert {"magnitude", "taylor"} <= set(criterion_names(iterative=True))
    assert "random" not in criterion_names(iterative=True) and not pool_sources & set(criterion_names())
    assert all(isinstance(criterion(name), Criterion) for name in criterion_names())


def test_unknown_names_are_typed_errors_naming_the_choices() -> None:
    with pytest.raises(PruneError, match="unknown score source 'oracle': choose one of smsp, "):
        score_source("oracle")
    with pytest.raises(PruneError, match="unknown criterion 'smsp'"):
        criterion("smsp")  # a pool source scores no model by itself
    with pytest.raises(PruneError, match="unknown similarity estimator 'cosine'"):
        similarity_estimator("cosine")
    assert similarity_estimator("leep").name == "leep" and set(SIMILARITY_ESTIMATORS) == {"prototype", "leep"}


def test_config_and_adapt_check_their_inputs_against_the_registries() -> None:
    from edge_smsp import adaptation

    with pytest.raises(PruneError, match="unknown method 'oracle'"):
        adaptation.AdaptConfig(ratio=0.5, method="oracle")
    with pytest.raises(PruneError, match="unknown scratch criterion 'random'"):
        adaptation.AdaptConfig(ratio=0.5, method=SCRATCH, scratch_criterion="random")
    with pytest.raises(PruneError, match="unknown similarity 'cosine'"):
        adaptation.AdaptConfig(ratio=0.5, similarity="cosine")
    with pytest.raises(PruneError, match="needs a pruning ratio"):
        adaptation.adapt(None, None, None, adaptation.AdaptConfig(method="magnitude"))  # type: ignore[arg-type]


def test_a_source_refuses_inputs_its_needs_did_not_get() -> None:
    from edge_smsp import adaptation

    inputs = ScoreInputs(
        backbone=None, model=None, task=None, config=adaptation.AdaptConfig(ratio=0.5).scoring()
    )  # type: ignore[arg-type]
    with pytest.raises(PruneError, match="taylor needs a warm-up"):
        score_source("taylor")(inputs)
    with pytest.raises(PruneError, match="smsp needs the pool entries it selected"):
        score_source("smsp")(inputs)


def test_the_stages_of_an_adaptation_in_order() -> None:
    from edge_smsp import adaptation

    assert [stage.name for stage in adaptation.ADAPT_STAGES] == [
        "head",
        "select",
        "probe",
        "scores",
        "prune",
        "init",
        "recipe",
        "finetune",
        "evaluate",
    ]
    assert [stage.name for stage in adaptation.SCRATCH_STAGES] == ["head", "prune", "evaluate"]
