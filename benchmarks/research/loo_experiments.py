"""The named leave-one-out experiments of `benchmarks.research.loo` (`--exp NAME`): lists of variants, in the
order they were run."""

from __future__ import annotations

from benchmarks.research.loo import Variant

V = Variant
TOP1 = {"estimator": "proto", "init": "top1", "top_k": 1, "pool_iters": 1000}
RECIPE_NAMES = ("plain", "bn", "imprint", "bn+imprint", "bn+imprint+probe", "imprint+probe")
EXPERIMENTS: dict[str, list[Variant]] = {
    "gap2": [
        V(**TOP1, recipe="imprint", head="entry", lr=0.005),
        V(**TOP1, recipe="plain", lr=0.005),
        V(method="magnitude", recipe="bn"),
        V(method="random", recipe="bn"),
        V(method="taylor", recipe="bn", taylor="warmup"),
        V(estimator="proto", recipe="bn+imprint", pool_iters=1000),
        V(estimator="proto", recipe="bn", pool_iters=1000),
    ],
    "gap07": [
        V(**{**TOP1, "pool_ratio": 0.7}, recipe="imprint", head="entry"),
        V(**{**TOP1, "pool_ratio": 0.7}, recipe="imprint"),
        V(estimator="proto", recipe="bn+imprint", pool_iters=1000, pool_ratio=0.7),
        V(estimator="proto", recipe="plain", pool_iters=1000, pool_ratio=0.7),
    ],
    "gap": [
        V(**TOP1, recipe="imprint", head="entry"),
        V(**TOP1, recipe="bn+imprint", head="entry"),
        V(**TOP1, recipe="plain", bn_train=False),
        V(**TOP1, recipe="imprint", head="entry", bn_train=False),
        V(**TOP1, recipe="plain", head_lr=10.0),
        V(**TOP1, recipe="imprint", head="entry", head_lr=3.0),
        V(**TOP1, recipe="imprint+probe", head="entry"),
        V(**TOP1, recipe="imprint"),
        V(**TOP1, recipe="imprint", head="entries"),
    ],
    "recipe": [V(estimator="proto", recipe=r) for r in RECIPE_NAMES],
    "init": [
        V(estimator="proto", init=i, recipe=r, top_k=k)
        for r in ("plain", "bn+imprint")
        for i, k in (("top1", 1), ("top1", 5), ("avg", 5), ("wavg", 5), ("avg", 3))
    ],
    "followup05": [
        V(estimator="proto", init="top1", top_k=1, recipe=r, lr=lr)
        for r in ("plain", "bn+imprint")
        for lr in (0.003, 0.03)
    ]
    + [
        V(estimator="leep", init="top1", top_k=1),
        V(method="smsp-random", init="top1", top_k=1),
        V(estimator="proto", init="top1", top_k=1, pool_iters=1000),
        V(estimator="proto", init="top1", top_k=1, recipe="bn+imprint", pool_iters=1000),
        V(estimator="proto", pool_iters=1000),
        V(estimator="proto", init="avg", top_k=3, pool_iters=1000),
    ],
    "r07": [
        V(estimator="proto", recipe=r, init=i, top_k=k, pool_ratio=pr, pool_iters=pi, mask_source=ms)
        for r in ("plain", "bn+imprint")
        for i, k, pr, pi, ms in (
            ("backbone", 5, 0.5, 400, "masks"),
            ("top1", 1, 0.5, 400, "masks"),
            ("top1", 1, 0.5, 400, "scores"),
            ("top1", 1, 0.7, 400, "masks"),
            ("top1", 1, 0.7, 1000, "masks"),
            ("top1", 1, 0.5, 1000, "scores"),
        )
    ],
    "sweep": [
        V(estimator="proto", init="top1", top_k=1, recipe="plain", pool_iters=1000),
        V(estimator="proto", init="top1", top_k=1, recipe="bn+imprint", pool_iters=1000),
        V(estimator="proto", recipe="plain", pool_iters=1000),
        V(estimator="proto", recipe="bn+imprint", pool_iters=1000),
        V(method="taylor", recipe="plain", taylor="warmup"),
        V(method="taylor", recipe="bn+imprint", taylor="imprint"),
        V(method="random", recipe="plain"),
    ],
    "shrink": [
        V(estimator="proto", recipe="bn+imprint/10", pool_iters=1000),
        V(estimator="proto", init="top1", top_k=1, recipe="imprint", pool_iters=1000),
        V(estimator="proto", init="top1", top_k=1, recipe="plain", pool_iters=1000, bn_train=False),
        V(estimator="proto", init="top1", top_k=1, recipe="bn+imprint", pool_iters=1000, bn_train=False),
        V(estimator="proto", init="top1", top_k=1, recipe="bn+imprint/10", pool_iters=1000),
        V(method="taylor", recipe="bn+imprint/10", taylor="imprint"),
    ],
    "px64": [
        V(estimator="proto", init="top1", top_k=1, recipe="plain"),
        V(estimator="proto", init="top1", top_k=1, recipe="bn+imprint"),
        V(estimator="proto", recipe="plain"),
        V(method="taylor", recipe="plain", taylor="warmup"),
        V(method="random", recipe="plain"),
    ],
    # which entry's weights: each of the top 5 in turn, the probe (edge_smsp.transfer.entry_probe), AdamW; run with
    # --ratio 0.5 (probe05) and --ratio 0.7 (probe07); pool05_2000: entries trained @2000 instead of @1000
    "probe05": [V(**TOP1, recipe="bn+imprint", pick=p) for p in range(1, 5)]
    + [V(**TOP1, recipe=r, probe=3, optimizer=o) for r in ("bn+imprint", "plain") for o in ("sgd", "adamw")]
    + [V(**TOP1, recipe="bn+imprint", optimizer="adamw", lr=lr) for lr in (None, 3e-4)]
    + [V(**TOP1, recipe="plain", optimizer="adamw")],
    "probe07": [
        V(**{**TOP1, "pool_ratio": 0.7}, recipe="bn+imprint", probe=3, optimizer=o) for o in ("sgd", "adamw")
    ],
    "pool05_2000": [V(**{**TOP1, "pool_iters": 2000}, recipe="bn+imprint", probe=p) for p in (1, 3)],
    # around the probed default: learning rate, label smoothing, more recipe images, frozen early blocks,
    # distillation (unpruned backbone / the probed entries as teacher), LP-FT
    "default05": [
        V(**TOP1, recipe="bn+imprint", probe=3, **change)
        for change in (
            {"lr": 0.005},
            {"lr": 0.02},
            {"smoothing": 0.1},
            {"samples": 2048},
            {"freeze": 0.25},
            {"freeze": 0.5},
            {"distill": 0.2},
            {"distill": 0.5},
            {"distill": 0.5, "teacher": "entries"},
            {"distill": 0.8, "teacher": "entries"},
        )
    ]
    + [V(**TOP1, recipe="bn+imprint+probe", probe=3, samples=n) for n in (512, 1500)],
    # the same 100 iterations with more images per step (2x and 4x the compute of batch 32)
    "batch05": [
        V(**TOP1, recipe="bn+imprint", probe=3, batch=b, lr=lr)
        for b, lr in ((64, None), (64, 0.02), (128, 0.02), (128, 0.04))
    ],
    "tp": [
        V(method=m, recipe=r, taylor=t)
        for r in ("plain", "bn+imprint")
        for m, t in (
            ("taylor", "warmup"),
            ("taylor", "imprint"),
            ("magnitude", "warmup"),
            ("random", "warmup"),
        )
        if not (r == "plain" and t == "imprint")
    ],
}
