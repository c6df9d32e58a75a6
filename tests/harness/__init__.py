"""Integration-test harness: a real Synapse homeserver and matrix-nio users that drive it."""

from .person import MakePerson, Person, ReceivedMessage
from .synapse import MakeSynapse, Synapse, SynapseError

__all__ = [
    "MakePerson",
    "MakeSynapse",
    "Person",
    "ReceivedMessage",
    "Synapse",
    "SynapseError",
]
