"""The one exception the inference layer raises for a request it cannot serve."""

# Far more digits than any version, count or size needs; int() itself refuses past 4300.
MAX_DIGITS = 18


class InferenceError(Exception):
    """A request problem with the HTTP status that describes it (400, 404, 413, 415, 422, 503)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def parse_count(text: str) -> int | None:
    """``text`` as a non-negative integer when it is plain ASCII digits, else None; never raises."""
    if text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS:
        return int(text)
    return None
