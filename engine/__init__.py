"""Aetherius Orchestrator: Kubernetes event storms in, one incident each, workflows out.

The package is layered so each part can be tested alone:

- ``engine.events``      intake: any accepted event shape -> one :class:`Event`
- ``engine.spec``        rule files (strategies, workflows) -> validated models
- ``engine.check``       collects every problem of a rule directory with ``path:line``
- ``engine.rulebase``    strategies compiled into a durable-rules rule set (generations)
- ``engine.correlation`` strategy hits grouped into incidents on a reactivex scheduler
- ``engine.replay``      the offline pipeline behind ``aetherius replay``
"""

__version__ = "0.1.0"
