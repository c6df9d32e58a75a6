"""`python -m bot` is the same as the `onboarding-bot` command."""

from bot.cli import main

raise SystemExit(main())
