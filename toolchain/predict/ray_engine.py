"""``--engine ray``: the same shards and the same runtime in a Ray Data pipeline, on a laptop or a cluster.

The pipeline is the run's unfinished shards as a dataset (one block each), ``map_batches`` on an actor
pool whose actors each load the model once (:class:`toolchain.predict.scoring.ShardScorer`: one ONNX
Runtime thread, one CPU per actor), and, per shard, read its rows from the input file, score them and
write its Parquet file; the driver streams the shards' results back for the progress bar. Without
``--address`` the command starts a local Ray on this machine's usable cores and stops it at the end; with
``--address`` (``ray://HOST:10001`` or ``auto``) the same pipeline runs on that cluster unchanged.

Why the actors write the shards rather than ``Dataset.write_parquet``: a resumable, exactly-once output needs
each shard's rows in one file named by its input range and renamed into place complete (see
:mod:`toolchain.predict.shards`); Ray's writer names files by its own blocks and tasks. The inputs, the
output dir and the model must be at the same path on every node (a shared filesystem), and every node
needs toolchain installed.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

from toolchain.core.errors import ConfigError
from toolchain.predict.inputs import Shard
from toolchain.predict.scoring import ScoringContext, ShardResult, ShardScorer

INSTALL = "pip install 'toolchain[ray]'  (or: pip install 'ray[data]>=2.60.0')"
LOCAL_OBJECT_STORE = 256 * 1024 * 1024   # only shard descriptors and results travel through it


def require_ray() -> None:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray Data, which is not installed ({exc}): {INSTALL}; or use "
                          "--engine local") from None


class RayShardScorer:
    """The actor: the model loaded once in ``__init__``; each batch is one shard descriptor."""

    def __init__(self, context: ScoringContext):
        from toolchain.predict.local import die_with_parent

        die_with_parent()
        self.scorer = ShardScorer(context)

    def __call__(self, batch: dict) -> dict:
        results = [self.scorer(Shard.from_json(str(item))) for item in batch["shard"]]
        return {"name": [r.name for r in results], "rows": [r.rows for r in results],
                "bad": [r.bad for r in results], "seconds": [r.seconds for r in results]}


def start_ray(address: str | None, workers: int) -> None:
    import ray

    if address:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    else:
        ray.init(num_cpus=workers, object_store_memory=LOCAL_OBJECT_STORE, log_to_driver=False,
                 include_dashboard=False)


def actors(address: str | None, workers: int) -> int:
    """One actor per CPU of the cluster (local: the usable cores)."""
    import ray

    return workers if not address else max(1, int(ray.cluster_resources().get("CPU", 1)))


def run_ray(shards: list[Shard], context: ScoringContext, workers: int, address: str | None,
            progress: Callable[[int], None]) -> Iterator[ShardResult]:
    require_ray()
    if not shards:
        return
    import ray
    import ray.data

    start_ray(address, workers)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        pool = min(actors(address, workers), len(shards))
        items = [{"shard": shard.to_json()} for shard in shards]
        scored = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            RayShardScorer, fn_constructor_kwargs={"context": context}, batch_size=1, num_cpus=1,
            compute=ray.data.ActorPoolStrategy(size=pool))
        for row in scored.iter_rows():
            result = ShardResult(str(row["name"]), int(row["rows"]), int(row["bad"]), float(row["seconds"]))
            progress(result.rows + result.bad)
            yield result
    finally:
        ray.shutdown()
