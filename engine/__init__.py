"""Aetherius Orchestrator: Kubernetes event storms in, one incident each, workflows out.

The package is layered; imports point one way (``.importlinter`` enforces it):

- the pure core, importable without any HTTP client, database or bus driver:
  ``engine.events`` (intake: any accepted event shape -> one :class:`Event`),
  ``engine.rules`` (the rule language: models, loader, checks, conditions, schema),
  ``engine.expressions`` / ``engine.templates`` (the sandboxed expression language, each
  evaluation on an ``engine.budget`` of memory and work),
  ``engine.rulebase`` (events matched against strategies compiled into durable-rules by
  ``engine.rulecompiler``), ``engine.correlation``
  (hits grouped into incidents), ``engine.replay``, ``engine.runner`` and ``engine.store``
  (the workflow runner decides, the store remembers), and ``steps`` (the step types);
- ``engine.logs``: the one log formatter (ids on every line, text or JSON), standard library only;
- ``engine.config``: the typed service configuration, every default in one place;
- ``engine.storage``: everything PostgreSQL (pool, migrations, every SQL statement);
- ``engine.service``: the long-lived service, a composition root of named parts;
- ``engine.api``: the HTTP API, one router per resource;
- ``engine.devservers``: embedded NATS/PostgreSQL/Redis for development and tests;
- ``engine.cli``: the ``aetherius`` command.
"""

__version__ = "0.1.0"
