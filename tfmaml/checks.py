"""Argument checks shared across the package, with errors that name the
argument and the value received."""

import os


def check_int(name: str, value, *, minimum: int) -> int:
    """Returns `value` if it is an int (not a bool) >= `minimum`.

    Args:
        name: The argument's name, for the error.
        value: The value received.
        minimum: The smallest value allowed.

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
    """`check_int`, letting `None` through.

    Args:
        name: The argument's name, for the error.
        value: The value received.
        minimum: The smallest value allowed.
    """
    return None if value is None else check_int(name, value, minimum=minimum)


def check_bool(name: str, value) -> bool:
    """Returns `value` if it is a bool.

    Args:
        name: The argument's name, for the error.
        value: The value received.

    Raises:
        TypeError: If it is not.
    """
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool. Received: {name}={value!r}")
    return value


def check_rate(name: str, value) -> float:
    """Returns `value` as a float if it is a finite number > 0.

    Args:
        name: The argument's name, for the error.
        value: The value received.

    Raises:
        TypeError: If it is not a number.
        ValueError: If it is not finite and positive.
    """
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be a number. Received: {name}={value!r}"
        ) from None
    if not rate > 0 or rate == float("inf"):
        raise ValueError(
            f"`{name}` must be a finite number > 0. Received: {name}={value!r}"
        )
    return rate


def check_momentum(value) -> float:
    """Returns `value` if it is in [0, 1).

    Args:
        value: The value received.

    Raises:
        ValueError: Naming `inner_momentum` and the value.
    """
    if not 0.0 <= value < 1.0:
        raise ValueError(
            "`inner_momentum` must be in [0, 1). Received: "
            f"inner_momentum={value!r}"
        )
    return float(value)


def environment_switch(name: str, *, off: str, on: str) -> bool:
    """Whether the environment variable `name` is `1` (the default when
    unset) rather than `0`.

    Args:
        name: The variable.
        off: What `0` does, for the error.
        on: What `1` does, for the error.

    Raises:
        ValueError: If it is set to anything but `0` or `1`.
    """
    value = os.environ.get(name, "1")
    if value not in ("0", "1"):
        raise ValueError(
            f"{name} must be 0 ({off}) or 1 ({on}). Received: {value!r}"
        )
    return value == "1"
