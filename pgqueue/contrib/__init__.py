"""Conveniences outside the core: `embedded` (a PostgreSQL started for you when none is
configured) and `demo` (`make demo`). The core never imports this package, except the
embedded server, loaded lazily when no database is configured."""
