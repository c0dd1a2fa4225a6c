"""Environment variables that the framework's processes share or must not inherit."""

# A process group of the caller's (e.g. a test that trained in-process) must not leak into the run's
# learner, which would try to bind the same port; DeepSpeed's launcher sets these for several ranks.
# A rollout worker is never a learner rank, and vLLM must not join a group it sees there.
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT", "CROSS_RANK", "CROSS_SIZE")
