"""The integration tests' Synapse is the package's dev server (bot/devserver.py), re-exported."""

from __future__ import annotations

from bot.devserver import GENEROUS_RATE_LIMITS, MakeSynapse, Synapse, SynapseError

__all__ = ["GENEROUS_RATE_LIMITS", "MakeSynapse", "Synapse", "SynapseError"]
