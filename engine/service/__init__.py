"""The long-lived service: events in from NATS and HTTP, incidents and workflows out."""

from engine.service.service import Service, serve

__all__ = ["Service", "serve"]
