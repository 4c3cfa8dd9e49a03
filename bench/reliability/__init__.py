"""``python -m bench.reliability``: hostile input, overload, shutdown and soak against real servers.

Bounded in time, loopback only; every server it drives is started here on free ports and stopped
before it returns. Results go to ``docs/reliability.md`` and ``bench/results/reliability-*.json``.
"""
