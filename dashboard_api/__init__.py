"""dashboard_api: the operator API (FastAPI), city analytics and the dashboard page.

Reads through :mod:`timeseries` queries; every query is built from catalog identifiers and
bound or escaped values. Imports :mod:`citysense` and :mod:`timeseries`.
"""
