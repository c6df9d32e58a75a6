"""Matrix onboarding mentor: walks newcomers through a team's learning roadmap."""

__version__ = "0.1.0"
