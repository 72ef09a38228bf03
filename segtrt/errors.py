"""Exception types.

``SegtrtError`` is for problems a user can cause and fix (a missing file, a wrong channel count, a
backend that is not installed). Its message is one line saying what was received and what was
expected; the CLI prints it without a traceback and exits non-zero. Anything else that escapes is a
bug in segtrt and keeps its traceback.
"""


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters), for logs and the run report."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


class SegtrtError(Exception):
    """A problem the user can fix; the message is shown as-is, without a traceback."""


class SettingsError(SegtrtError):
    """A setting (a PredictSettings field, a command-line option) has a value outside what it accepts."""


class OutputPathError(SegtrtError):
    """An output path cannot be written: it is a file where a folder is needed (or the reverse), or the
    folder is not writable."""


class ModelFolderError(SegtrtError):
    """The nnU-Net model folder is missing files, or they do not have the expected content."""


class UntrustedCheckpointError(ModelFolderError):
    """A checkpoint holds Python objects outside the allow-list for nnU-Net checkpoints."""


class InputImageError(SegtrtError):
    """An input image cannot be read, or does not fit the model (channels, dimensions)."""


class NonFiniteError(SegtrtError):
    """An image, or the logits/probabilities computed from it, holds NaN or infinite values."""


class BackendUnavailableError(SegtrtError):
    """The requested backend or device cannot run on this machine."""


class ExportError(SegtrtError):
    """An ONNX export or its numerical check failed."""


class EngineError(SegtrtError):
    """A TensorRT engine cannot be built, loaded or used as requested."""


class DeviceMemoryError(SegtrtError):
    """The case does not fit in the device's memory with the chosen settings."""


class OutputError(SegtrtError):
    """An output format cannot be written as requested (DICOM output without a DICOM input, a bad label codes file)."""


class CompiledCacheError(SegtrtError):
    """An ahead-of-time compiled network in segtrt's cache is damaged or cannot be made as requested."""
