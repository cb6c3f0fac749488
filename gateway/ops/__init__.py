"""Running as a service: metrics and health, systemd's notify protocol and watchdog, the event loop's lag,
and the logs.

::

    metrics.py   Prometheus /metrics and /healthz, served from the event loop
    sdnotify.py  READY, STATUS, STOPPING, RELOADING and the watchdog (Type=notify)
    loopmon.py   the event loop's lag, as the serial readers would feel it
    logs.py      one line per record on stderr; journald priorities; per-logger levels
"""
