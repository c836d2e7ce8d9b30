"""A small stand-in for the SPEK platform, for spek-sentinel's end-to-end tests and demo: an
HTTP/WebSocket app over PostgreSQL and Redis whose releases (see releases.py) include good ones
and bad ones with one fault each."""
