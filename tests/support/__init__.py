"""What the tests share, a module a concern; a test module imports from these, never from
another test module.

- ports: a free loopback port, a bound socket, waiting until something listens
- waiting: ``eventually`` (and its async twin), named ``Signals`` and ``wait_event``
- redis: a redis-server of the run's own on a free port, a cluster, sentinels, seeded prefixes
- servers: uvicorn in a thread, a raw asyncio portal, a scripted raw TCP portal
- certificates: a test CA and certificates signed by it
- settings: the loopback stack's settings, the documented example's settings
- stack: the whole router on loopback with recording backends
- process: `edge serve` in a process of its own
- cli: the `edge` command as ops run it, and its config file
- dashboard: logged in to the dashboard, its forms and words
- raw: HTTP/1.1 as raw bytes on a socket
- proxy: the forwarding leg alone, around Forwarder.forward
- portals: three portals that each read HTTP/1.1 their own way
- hostile: portals that misbehave on purpose, and the customers behind edge
- fleet: several edge instances on one store, with customers and ops
"""
