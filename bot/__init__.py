"""Matrix onboarding mentor: walks newcomers through a team's learning roadmap."""

import signal as _signal
import threading as _threading

__version__ = "0.1.0"

# `kill -USR1`/`-USR2` ask the running bot for its nudge sweep or digest. Their default action
# ends a process, and the handler that runs the jobs exists only once the bot is up: until then
# (imports, login, the first sync) such a signal is only noted here, and run when the scheduler
# starts (app.JobSignals). Set as early as anything of the bot is imported.
EARLY_SIGNALS: list[int] = []


def _note(signum: int, _frame: object) -> None:
    EARLY_SIGNALS.append(signum)


if _threading.current_thread() is _threading.main_thread():
    for _sig in (_signal.SIGUSR1, _signal.SIGUSR2):
        if _signal.getsignal(_sig) is _signal.SIG_DFL:
            _signal.signal(_sig, _note)
