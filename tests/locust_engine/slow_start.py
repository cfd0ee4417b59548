"""Loaded by ``locust -f`` beside loadkit's locustfile (never imported by pytest, which
must not import gevent): a start-up as slow as on a busy machine, after gevent's loop has
read its clock and before Locust starts its ``--run-time`` timer."""

import gevent
from gevent import monkey

SLOW_START_S = 3.0

gevent.get_hub()
monkey.get_original("time", "sleep")(SLOW_START_S)
