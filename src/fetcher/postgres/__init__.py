"""The PostgreSQL backend: several daemons on one queue, each host leased to one at a time.

`schema` (tables, views, migrations), `store` (`JobQueue`: claims, host leases, outcomes and
counters), `reader` (`QueueReader`, for the commands that read).
"""
