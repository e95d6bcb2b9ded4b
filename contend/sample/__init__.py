"""Samplers: what Postgres, py-spy and NATS show while a load runs (docs/metrics.md).

    graph        the wait-for graph of one snapshot (pure)
    pg           PgSampler: one pg_stat_activity read per tick, a polite observer
    pyspy        py-spy dumps, a whole-run recording, the "7 of 8 result workers ..." summary
    attribution  a root blocker -> its client process and thread, with an on-demand stack
    waitgraph    the wait-for graph over server threads: Python lock waits and Postgres lock waits
    findings     that graph in plain sentences: cross-layer deadlocks, lock convoys, idle holders
    nats         per-job consumer progress and the ml_results queue depth
    runner       SamplerSet: all of them in one child process, writing samples/*.jsonl
    final        after the load: each job's recorded counts against the rows its results wrote
    watch        ``contend watch``: the live view
"""
