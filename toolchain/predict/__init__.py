"""`toolchain predict EXPORT_DIR|BENTO_TAG --input PATH_OR_GLOB... --output DIR`: bulk scoring of archives.

Reads JSONL, CSV and Parquet inputs (:mod:`toolchain.predict.inputs`, :mod:`toolchain.predict.reader`), scores
every text with the service's own runtime and answer (:mod:`toolchain.predict.model`: each text gets what
``POST /classify`` answers), and writes Parquet shards named by their input range, each atomically, so that a
rerun after a kill writes only the missing ones and no row is lost or doubled (:mod:`toolchain.predict.shards`).
Bad rows go to ``bad-rows.jsonl`` with their location and reason. The work runs in one process per usable core
(:mod:`toolchain.predict.local`) or in a Ray Data pipeline on a laptop or a cluster
(:mod:`toolchain.predict.ray_engine`); ``--trend COLUMN`` adds the daily negative share per predicted topic and
the days the surge alert would have fired (:mod:`toolchain.predict.trend`). The recipe is
:func:`toolchain.predict.job.predict`; the CLI handler is :mod:`toolchain.commands.predict`.
"""
