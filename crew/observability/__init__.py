"""Observability: Prometheus metrics, Sentry reporting, structured logs.

Each part is imported only when it is turned on (METRICS_ENABLED, SENTRY_DSN), so a
server or a command with them off never loads prometheus_client or sentry_sdk. The
modules here that everything may import (`context`, `redact`, `hooks`) stay light.
"""
