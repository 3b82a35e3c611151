"""Names of the adaptation methods; torch-free so the CLI can list them without loading models."""

# smsp: top-K most similar pool entries; smsp-random: K random entries (does similarity matter?);
# random/magnitude/taylor: one-shot importance on the new task; scratch: the pool-building iterative method.
METHODS = ("smsp", "smsp-random", "random", "magnitude", "taylor", "scratch")
POOL_METHODS = ("smsp", "smsp-random")
