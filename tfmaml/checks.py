"""Argument checks shared across the package, with errors that name the
argument and the value received."""


def check_int(name: str, value, *, minimum: int) -> int:
    """Returns `value` if it is an int (not a bool) >= `minimum`.

    Raises:
        ValueError: If `value` is not an int or is below `minimum`.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}"
        )
    if value < minimum:
        raise ValueError(
            f"`{name}` must be >= {minimum}. Received: {name}={value!r}"
        )
    return value


def check_optional_int(name: str, value, *, minimum: int) -> int | None:
    """`check_int`, letting `None` through."""
    return None if value is None else check_int(name, value, minimum=minimum)
