"""One call form for the tests that run strategies: `run(params, cfg, cond, mask, **options)` builds
the `Strategy` and `Schedule` from flat keywords and calls `scaling.run.run_strategy` on
`decode.GPTModel(cfg)`; returns the StrategyResult (`run_with_stats`: also the RunStats)."""
from scalingar_jax.decode import GPTModel
from scalingar_jax.scaling.options import ImportanceSampling, Pool, Schedule, Strategy
from scalingar_jax.scaling.run import run_strategy


def run_with_stats(params, cfg, cond, cond_mask=None, *, strategy="scalingar", num_candidates=8, sampling=None,
                   scaling=None, first_candidate=0, checkpoints=None, tau=None, fill_code=None, mesh=None,
                   compaction=True, rows=None, lanes=None, shrink=True, **kw):
    knobs = {k: v for k, v in dict(checkpoints=checkpoints, tau=tau, fill_code=fill_code).items() if v is not None}
    st = Strategy(strategy, num_candidates, sampling=sampling, scaling=scaling, first_candidate=first_candidate,
                  importance=ImportanceSampling(**knobs))
    pool = None if rows is None else Pool(rows, lanes, shrink)
    return run_strategy(GPTModel(cfg), params, cond, cond_mask, strategy=st,
                        schedule=Schedule(mesh=mesh, compaction=compaction, pool=pool), **kw)


def run(*args, **kw):
    return run_with_stats(*args, **kw)[0]
