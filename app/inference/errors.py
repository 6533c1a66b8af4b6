"""The one exception the inference layer raises for a request it cannot serve."""


class InferenceError(Exception):
    """A request problem with the HTTP status that describes it (400, 404, 413, 415, 422, 503)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message
