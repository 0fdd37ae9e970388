"""Running pgqueue in production: `admin` (inspection, explain, bulk retry and purge) and
`metrics` (Prometheus)."""
