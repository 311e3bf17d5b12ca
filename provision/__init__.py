"""Provisioning: configuration and secrets for the real servers around citysense.

``citysense deploy broker`` (Mosquitto users, ACL, certificates), ``citysense deploy influx``
(the database with a writer and a reader user) and ``citysense api keys add``. Nothing here
runs in a service; it writes files an operator installs. Invariants: every secret file is
created 0600 inside folders created 0700 (never widened afterwards), no secret is printed
except the one new API key ``api keys add`` exists to show, and passwords are stored only in
the servers' own hashed forms.
"""
