"""Running it: the HTTP server (web), Discord alerts, Prometheus metrics, the live dashboard and systemd notifications.

Imports api and below.
"""
