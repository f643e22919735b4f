"""The project's own exception types.

Every failure a user can cause (a bad file, a wrong option, a missing execution
provider) surfaces as one of these, with a message that names the problem.
The encoder and the exporter raise them too, so a caller needs one ``except``.
"""


class CoolChicError(Exception):
    """Base class of every error raised on purpose by coolchic."""


class ConfigError(CoolChicError, ValueError):
    """An impossible or inconsistent architecture, preset or option."""


class BitstreamError(CoolChicError, ValueError):
    """A bitstream that is truncated, corrupted, of another format or absurd."""


class ResourceLimitError(BitstreamError):
    """A bitstream whose decode would need more memory than the caller allows.

    Raised from the header alone, before anything in proportion to it is
    allocated; ``decode(..., max_memory=...)`` or ``--max-memory`` raise the
    limit. A subclass of :class:`BitstreamError`: to a caller that does not
    raise limits, such a file is as unusable as a corrupted one.
    """


class ImageIOError(CoolChicError, OSError):
    """An image or YUV file that cannot be read or written."""


class ProviderError(CoolChicError, RuntimeError):
    """An onnxruntime execution provider that was asked for but is absent."""


class InferenceError(CoolChicError, RuntimeError):
    """onnxruntime failed to build or to run the upsampling and synthesis graph."""


class EncodeError(CoolChicError, RuntimeError):
    """The encoder could not produce a bitstream it can read back."""


class MissingDependencyError(CoolChicError, ImportError):
    """An optional part (an extra such as ``encoder``) that is not installed; the message names the extra."""
