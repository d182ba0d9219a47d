"""Errors that users see: one readable line per problem, naming the file or row."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (a file, a table row, a config value).

    ``problems`` holds one human-readable line per problem; ``str()`` lists them all,
    so a validation step can report every problem at once instead of the first.
    """

    def __init__(self, problems: str | list[str], header: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.header = header
        lines = ([header] if header else []) + [f"  - {p}" for p in self.problems]
        if not header and len(self.problems) == 1:
            lines = self.problems
        super().__init__("\n".join(lines))
