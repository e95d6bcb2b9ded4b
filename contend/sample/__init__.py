"""Samplers: what Postgres, py-spy and NATS show while a load runs (docs/metrics.md).

They collect and write records; what the records mean is ``contend.diagnosis``'s to say.

    pg           PgSampler: one pg_stat_activity read per tick, a polite observer
    pyspy        py-spy dumps, a whole-run recording, the "7 of 8 result workers ..." summary
    attribution  a root blocker -> its client process and thread, with an on-demand stack
    crosslayer   stacks and the latest Postgres snapshot handed to ``contend.diagnosis`` at each dump
    nats         per-job consumer progress and the ml_results queue depth
    runner       SamplerSet: all of them in one child process, writing samples/*.jsonl
    final        after the load: each job's recorded counts against the rows its results wrote
    watch        ``contend watch``: the live view
"""
