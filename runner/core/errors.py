"""The project's error types: each maps to how the CLI reports it."""


class ConfigError(ValueError):
    """A bad configuration: reported as one line on stderr, exit status 2, before any output is written."""


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""

    def __init__(self, what: str, module: str, extra: str):
        super().__init__(
            f"{what} needs the optional dependency '{module}', which is not installed: "
            f"pip install -e '.[{extra}]'"
        )
        self.module = module
        self.extra = extra


def require(module: str, extra: str, what: str | None = None):
    """Import an optional heavy dependency, or fail with an error naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name is not None and e.name.split(".")[0] != module.split(".")[0]:
            raise
        raise MissingExtraError(what or module, module, extra) from e
