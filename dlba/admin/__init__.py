"""The admin web: dashboard, JSON API and Prometheus metrics (DESIGN.md §2)."""
