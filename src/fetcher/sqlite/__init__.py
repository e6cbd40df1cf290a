"""The SQLite backend: the embedded default, one file, several daemons on one machine.

The only package that imports `sqlite3` or `aiosqlite`. `store` is the daemon's side
(`JobQueue`), `reader` the commands' read side (`QueueReader`), `schema` the DDL, its
migrations and how every connection is opened.
"""
