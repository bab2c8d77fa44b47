"""Run context, registry, config schemas and validation, seeding, logging, checkpoints, reports."""
