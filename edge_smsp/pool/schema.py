"""The pool's SQLite schema: the first version's tables, and the migrations that lead to the current one.

A new pool is made the way an old one is brought up to date (the base schema, then every migration), so a
migrated pool and a fresh one are the same database.
"""

from __future__ import annotations

SCHEMA_VERSION = 5
BASE_VERSION = 1

BASE_SCHEMA = """
CREATE TABLE schema_version (
    version INTEGER NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE backbones (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    weights_hash TEXT NOT NULL,
    image_size INTEGER NOT NULL CHECK (image_size > 0),
    checkpoint TEXT,
    created TEXT NOT NULL,
    UNIQUE (name, weights_hash, image_size)
);
CREATE TABLE tasks (
    id INTEGER PRIMARY KEY,
    task_key TEXT NOT NULL UNIQUE,
    dataset TEXT NOT NULL,
    classes TEXT NOT NULL,
    class_names TEXT NOT NULL,
    seed INTEGER NOT NULL,
    n_train INTEGER NOT NULL CHECK (n_train >= 0),
    n_val INTEGER NOT NULL CHECK (n_val >= 0),
    created TEXT NOT NULL
);
CREATE TABLE entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id INTEGER NOT NULL REFERENCES tasks (id),
    backbone_id INTEGER NOT NULL REFERENCES backbones (id),
    ratio REAL NOT NULL CHECK (ratio >= 0 AND ratio < 1),
    method TEXT NOT NULL,
    iters INTEGER NOT NULL CHECK (iters >= 0),
    val_accuracy REAL CHECK (val_accuracy IS NULL OR (val_accuracy >= 0 AND val_accuracy <= 1)),
    masks BLOB NOT NULL,
    scores BLOB,
    created TEXT NOT NULL,
    extra TEXT NOT NULL,
    UNIQUE (task_id, backbone_id, ratio, method, iters)
);
CREATE INDEX entries_by_backbone ON entries (backbone_id);
CREATE TABLE entry_files (
    entry_id INTEGER NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (entry_id, name)
);
CREATE TABLE device_measurements (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    backbone TEXT NOT NULL,
    image_size INTEGER NOT NULL CHECK (image_size > 0),
    ratio REAL NOT NULL CHECK (ratio >= 0 AND ratio < 1),
    params INTEGER NOT NULL,
    macs INTEGER NOT NULL,
    latency_p50_ms REAL NOT NULL,
    latency_p90_ms REAL NOT NULL,
    latency_p99_ms REAL NOT NULL,
    peak_rss_mib REAL,
    report TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE INDEX measurements_by_device ON device_measurements (device, backbone, image_size);
"""

# version -> the statements that take a pool from it to the next version.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # Measurements are keyed by the runtime and numeric precision that produced them. Every measurement made
    # before version 2 came from onnxruntime in fp32: these literals are history, not today's defaults.
    1: (
        "ALTER TABLE device_measurements ADD COLUMN runtime TEXT NOT NULL DEFAULT 'onnxruntime'",
        "ALTER TABLE device_measurements ADD COLUMN precision TEXT NOT NULL DEFAULT 'fp32'",
        "DROP INDEX measurements_by_device",
        "CREATE INDEX measurements_by_device ON device_measurements"
        " (device, backbone, image_size, runtime, precision)",
    ),
    # Task descriptors (edge_smsp.pool.descriptor_store): per task and backbone, the class prototypes of the unpruned
    # backbone (float16 [rows, width]) and their sketch for the vector search, plus per backbone the running sum
    # of every stored prototype row (their mean is the origin similarity is measured from).
    2: (
        "CREATE TABLE task_descriptors ("
        " task_id INTEGER NOT NULL REFERENCES tasks (id),"
        " backbone_id INTEGER NOT NULL REFERENCES backbones (id),"
        " samples INTEGER NOT NULL CHECK (samples > 0),"
        " seed INTEGER NOT NULL,"
        " rows INTEGER NOT NULL CHECK (rows > 0),"
        " width INTEGER NOT NULL CHECK (width > 0),"
        " data BLOB NOT NULL,"
        " sketch BLOB NOT NULL,"
        " created TEXT NOT NULL,"
        " PRIMARY KEY (task_id, backbone_id))",
        "CREATE TABLE descriptor_sums ("
        " backbone_id INTEGER PRIMARY KEY REFERENCES backbones (id),"
        " rows INTEGER NOT NULL CHECK (rows >= 0),"
        " total BLOB NOT NULL)",
    ),
    # Build claims: a `pool build` claims a task before training it, so that concurrent builds do each task once
    # (edge_smsp.pool.claims). One row per claimed build key; finishing deletes it with the entry's commit.
    3: (
        "CREATE TABLE build_claims ("
        " task_key TEXT NOT NULL,"
        " weights_hash TEXT NOT NULL,"
        " image_size INTEGER NOT NULL,"
        " ratio REAL NOT NULL,"
        " method TEXT NOT NULL,"
        " iters INTEGER NOT NULL,"
        " writer TEXT NOT NULL,"
        " machine TEXT NOT NULL,"
        " pid INTEGER NOT NULL,"
        " process_start TEXT NOT NULL,"
        " claimed TEXT NOT NULL,"
        " expires REAL NOT NULL,"
        " PRIMARY KEY (task_key, weights_hash, image_size, ratio, method, iters))",
    ),
    # The peak resident memory of the on-device adaptation (`deploy --device-data`) that produced the measured
    # model, beside its inference peak; NULL for models adapted on the host.
    4: ("ALTER TABLE device_measurements ADD COLUMN adapt_peak_rss_mib REAL",),
}


def statements(script: str) -> list[str]:
    """The SQL statements of a script (sqlite3 runs one per execute inside a transaction)."""
    return [statement for statement in script.split(";") if statement.strip()]
