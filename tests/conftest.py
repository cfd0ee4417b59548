"""Suite-wide setup."""

import signal

# A shell that starts a job in the background (a CI script, `cmd &`) leaves SIGINT
# ignored, and an ignored signal stays ignored across exec: the tests that press Ctrl-C
# on a loadkit or Locust process they start would then test nothing. A handled signal is
# reset to the default on exec, so the processes the tests start get a working SIGINT.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
