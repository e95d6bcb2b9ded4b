"""The diagnosis: what turns stacks and Postgres snapshots into meaning (pure where it can be).

    forest     the wait-for graph of one Postgres snapshot: edges, blocked, depth, roots
    threads    where a server thread waits, from its py-spy stack; "7 of 8 result workers ..."
    clients    the client process and thread of a backend (application_name)
    mapping    each backend's thread with its evidence: application_name, socket, elimination
    sources    the lock constructs and transaction blocks of a source file, by line
    sqlcomment sqlcommenter comments in a statement: which code sent it
    waitgraph  the wait-for graph over server threads: Python lock waits and Postgres lock waits
    findings   that graph in plain sentences: cross-layer deadlocks, lock convoys, idle holders

The samplers (``contend.sample``) collect and write records; they, ``contend watch`` and the offline
analysis (``contend.analysis``) all read meaning through this package. It imports nothing of
``contend`` outside itself.
"""
