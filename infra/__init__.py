"""Embedded development services (tansu broker, redis-server) and the production recipe."""
