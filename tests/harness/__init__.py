"""Integration-test harness: a real Synapse homeserver and matrix-nio users that drive it."""

from .person import MakePerson, Person, ReceivedMessage
from .synapse import GENEROUS_RATE_LIMITS, MakeSynapse, Synapse, SynapseError

__all__ = [
    "GENEROUS_RATE_LIMITS",
    "MakePerson",
    "MakeSynapse",
    "Person",
    "ReceivedMessage",
    "Synapse",
    "SynapseError",
]
