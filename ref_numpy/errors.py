"""The one error class for a user's mistake: a flag, a file, a folder, the disk.

Raised where the input is checked, with a message that names the problem and the fix. The
command lines (`ref_numpy.train.options.run_main`) print it as one `error:` line and exit with
code 2, keeping what was already saved; any other exception is a bug and keeps its traceback.
It is a ValueError, so code that calls the library directly may catch it as one.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake the user can fix; the message says what is wrong and how to fix it."""
