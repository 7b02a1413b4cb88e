"""Benchmark suite of airflow-provider-leap: run ``python -m bench`` (see docs/performance.md).

Kept outside the package and the test suite on purpose: it needs a page server process and a few
minutes of two cores, which neither an import nor CI should pay for.
"""
