"""The one exception type that reaches the user as a single line."""


class UserError(Exception):
  """Bad input (config, data, checkpoint, workdir): the message names the fix.

  `main.py` prints it as one line and exits non-zero; library callers get a normal exception.
  """
