"""fetcher: a rate-limited async HTTP fetcher service with a durable SQLite queue."""

__all__ = ["__version__"]

__version__ = "0.1.0"
