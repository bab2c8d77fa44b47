"""Config-driven experiment runner for LLM safety, differential privacy and federated learning."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
RECIPES_DIR = PROJECT_ROOT / "recipes"

__all__ = ["PROJECT_ROOT", "CONF_DIR", "RECIPES_DIR"]
