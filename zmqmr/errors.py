"""One exception tree, so the command line can tell user mistakes from bugs."""


class ZmqmrError(Exception):
    """Base of every error zmqmr raises on purpose."""


class UsageError(ZmqmrError):
    """A mistake on the command line or in its inputs: exit 2, one line, no traceback."""


class JobLoadError(UsageError):
    """The job file or module cannot be loaded or lacks a mapper or reducer."""


class InputError(UsageError):
    """An input path is missing, unreadable or not a regular file."""


class OutputError(UsageError):
    """The output directory cannot be used (not empty, not writable, overlaps the input)."""


class ProtocolError(ZmqmrError):
    """A message that breaks the wire protocol; `reason` is a short counter name."""

    def __init__(self, reason: str, detail: str = "", message_type: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.message_type = message_type  # the frame's "t", when it got that far


class UserCodeError(ZmqmrError):
    """The user's mapper, combiner, reducer or partitioner raised or broke its contract.

    Carries what a user needs to fix it: the input location and the user's traceback.
    """

    def __init__(self, message: str, location: str = "", traceback_text: str = ""):
        super().__init__(message)
        self.message = message
        self.location = location
        self.traceback_text = traceback_text
